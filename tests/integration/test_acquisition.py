"""The pycro-manager hook (runtime/acquisition.py) with a simulated acquisition loop.

The loop calls the hook at a fixed rate, faster than the engine, as pycro-manager's processing
thread would (``hook(image, metadata)`` with ``metadata["Axes"]``). pycro-manager itself is not
installable here; its contract is in shared/research/ecosystem.md section 5.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.runtime import acquisition
from cyclesr_deploy.runtime.acquisition import AcquisitionHook, HookConfig
from cyclesr_deploy.runtime.manifest import MANIFEST_NAME
from cyclesr_deploy.runtime.runner import EnhanceConfig
from tests.conftest import FakeEngine, fail_first_stack_append

WHOLE = EnhanceConfig(tile=0)


def _model() -> ModelConfig:  # model units = raw - 1: plus1 in model units is +1 in raw units
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=1),
        normalization=NormalizationConfig(low_a=0, high_a=2, low_b=0, high_b=2),
    )


class GatedEngine(FakeEngine):
    """A fake engine (+1) that blocks in ``infer`` until ``gate`` is set: the hook must keep
    returning while the engine is stuck."""

    def __init__(self) -> None:
        super().__init__("plus1")
        self.gate = threading.Event()
        self.entered_infer = threading.Event()
        self.thread: str | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.thread = threading.current_thread().name
        self.entered_infer.set()
        assert self.gate.wait(30), "test gate never opened"
        return super().infer(batch)


def _frame(value: int, shape=(24, 20)) -> np.ndarray:
    return np.full(shape, value, np.uint16)


def _acquire(hook, frames, axes, period: float) -> list[float]:
    """Call the hook at a fixed rate; the call times (s)."""
    times = []
    t_next = time.perf_counter()
    for frame, ax in zip(frames, axes, strict=True):
        t0 = time.perf_counter()
        out = hook(frame, {"Axes": ax, "PixelSizeUm": 0.1})
        times.append(time.perf_counter() - t0)
        assert out is None or out[0] is frame
        t_next += period
        time.sleep(max(0.0, t_next - time.perf_counter()))
    return times


def _values(path) -> list[int]:
    data = tifffile.imread(path).reshape(-1, *tifffile.imread(path).shape[-2:])
    return [int(np.median(f)) for f in data]


def test_hook_never_waits_on_the_engine_and_loses_no_frame_with_queue(tmp_path):
    engine = GatedEngine()
    with AcquisitionHook(tmp_path, engine=engine, model_config=_model(), enhance=WHOLE) as hook:
        frames = [_frame(10 + i) for i in range(12)]
        axes = [{"time": i // 2, "z": i % 2, "channel": "GFP"} for i in range(12)]
        _acquire(hook, frames[:1], axes[:1], 0)
        assert engine.entered_infer.wait(10)  # the engine is now stuck on frame 0 ...
        t0 = time.perf_counter()
        _acquire(hook, frames[1:], axes[1:], 0.001)  # ... and the acquisition goes on
        assert time.perf_counter() - t0 < 5
        assert not engine.gate.is_set()
        assert hook.status().queued == 11 and hook.status().done == 0
        assert engine.thread == "cyclesr-acquisition"  # never the acquisition thread
        engine.gate.set()
        assert hook.flush(timeout=20)
    report = hook.report
    assert report.ok and report.done == 12 and report.skipped == 0
    out = tmp_path / "acquisition_channel-GFP.ome.tif"
    assert _values(out) == [11 + i for i in range(12)]  # every frame, in order, +1
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TYX"
        assert '"0.1"' in tif.ome_metadata or 'PhysicalSizeX="0.1"' in tif.ome_metadata
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    (entry,) = manifest["files"].values()
    assert entry["status"] == "done" and entry["frames"] == 12
    assert entry["axes"] == {"channel": "GFP"}  # constant; time/z as compact runs of pages
    assert len(entry["page_axes"]) == 6
    assert entry["page_axes"][1] == {"pages": [2, 3], "time": 1, "z": [0, 1]}
    assert manifest["acquisition"]["when_behind"] == "queue"
    assert not list(tmp_path.glob("*.part"))


def test_latest_always_processes_the_newest_frame(tmp_path):
    engine = GatedEngine()
    cfg = HookConfig(when_behind="latest", queue_size=4, return_image=False, name="live")
    hook = AcquisitionHook(tmp_path, engine=engine, model_config=_model(), enhance=WHOLE,
                           config=cfg)  # fmt: skip
    _acquire(hook, [_frame(100)], [{"time": 0}], 0)
    assert engine.entered_infer.wait(10)
    _acquire(hook, [_frame(101 + i) for i in range(9)], [{"time": 1 + i} for i in range(9)], 0)
    assert hook.status().queued == 1  # only the newest waits: bounded memory
    engine.gate.set()
    report = hook.close()
    assert report.done == 2 and report.skipped == 8 and report.seen == 10
    assert _values(tmp_path / "live.ome.tif") == [101, 110]  # frame 0, then the newest
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    (entry,) = manifest["files"].values()
    assert entry["skipped_pages"] == list(range(1, 9)) and entry["status"] == "partial"


def test_full_queue_skips_new_frames_or_waits(tmp_path):
    engine = GatedEngine()
    cfg = HookConfig(queue_size=3)
    hook = AcquisitionHook(tmp_path / "skip", engine=engine, model_config=_model(),
                           enhance=WHOLE, config=cfg)  # fmt: skip
    _acquire(hook, [_frame(1)], [{}], 0)
    assert engine.entered_infer.wait(10)
    _acquire(hook, [_frame(2 + i) for i in range(6)], [{}] * 6, 0)
    engine.gate.set()
    report = hook.close()
    assert (report.done, report.skipped) == (4, 3)
    assert _values(tmp_path / "skip" / "acquisition.ome.tif") == [2, 3, 4, 5]
    manifest = json.loads((tmp_path / "skip" / MANIFEST_NAME).read_text())
    (entry,) = manifest["files"].values()
    assert "raw frames pycro-manager saved" in entry["note"]  # not: re-run on the output

    engine = GatedEngine()
    cfg = HookConfig(queue_size=2, when_full="wait")
    hook = AcquisitionHook(tmp_path / "wait", engine=engine, model_config=_model(),
                           enhance=WHOLE, config=cfg)  # fmt: skip
    threading.Timer(0.3, engine.gate.set).start()
    _acquire(hook, [_frame(1 + i) for i in range(6)], [{}] * 6, 0)  # waits for room
    report = hook.close()
    assert (report.done, report.skipped) == (6, 0)


def test_stacks_split_by_position_and_channel_and_names_never_overwrite(tmp_path):
    axes = [{"time": t, "position": p, "channel": c} for t in range(2) for p in (0, 1)
            for c in ("DAPI", "GFP")]  # fmt: skip
    for _ in range(2):  # a second acquisition into the same folder gets new names
        with AcquisitionHook(tmp_path, engine=FakeEngine("plus1"), model_config=_model(),
                             enhance=WHOLE, config=HookConfig(name="cells")) as hook:  # fmt: skip
            _acquire(hook, [_frame(i) for i in range(8)], axes, 0)
    names = sorted(p.name for p in tmp_path.glob("*.ome.tif"))
    assert len(names) == 8 and "cells_channel-DAPI_position-0.ome.tif" in names
    assert "cells_1_channel-GFP_position-1.ome.tif" in names
    assert _values(tmp_path / "cells_channel-GFP_position-1.ome.tif") == [4, 8]


def test_failures_are_reported_and_the_rest_goes_on(tmp_path, caplog):
    engine = FakeEngine("plus1", raise_at=2, exc=RuntimeError("GPU fell off the bus"))
    hook = AcquisitionHook(tmp_path, engine=engine, model_config=_model(), enhance=WHOLE)
    _acquire(hook, [_frame(i) for i in range(4)], [{"time": i} for i in range(4)], 0)
    report = hook.close()
    assert not report.ok and report.failed == 1 and report.done == 3
    assert "GPU fell off the bus" in hook.errors[0]
    assert "GPU fell off the bus" in caplog.text
    with pytest.raises(RuntimeError, match="closed"):
        hook(_frame(0), {})


def test_second_hook_on_the_same_folder_is_refused_and_bad_frames_fail(tmp_path):
    with AcquisitionHook(tmp_path, engine=FakeEngine(), model_config=_model()) as hook:
        with pytest.raises(InputError, match="cyclesr acquisition hook"):
            AcquisitionHook(tmp_path, engine=FakeEngine(), model_config=_model())
        bad = np.zeros((3, 8, 8), np.uint16)
        assert hook(bad, {})[0] is bad  # never raised into the acquisition's thread
        _acquire(hook, [_frame(1)], [{}], 0)
    assert not hook.report.ok and (hook.report.failed, hook.report.done) == (1, 1)
    assert "2-D" in " ".join(hook.errors)
    assert _values(tmp_path / "acquisition.ome.tif") == [1]  # the plain name: the good frames


def test_engine_open_failure_raises_in_the_constructor_and_frees_the_folder(tmp_path):
    with pytest.raises(InputError, match="neither a model folder") as failed:
        AcquisitionHook(tmp_path, model="no-such-model")
    assert failed.value.__traceback__ is not None  # the half-made hook is still referenced
    with AcquisitionHook(tmp_path, engine=FakeEngine(), model_config=_model()):
        pass  # the folder was released (not by garbage collection)


def test_the_camera_may_reuse_its_buffer_and_our_buffers_are_reused(tmp_path):
    engine = GatedEngine()
    cfg = HookConfig(queue_size=4)
    hook = AcquisitionHook(tmp_path, engine=engine, model_config=_model(), enhance=WHOLE,
                           config=cfg)  # fmt: skip
    camera = _frame(0)
    for i in range(3):
        camera[:] = 50 + i  # one buffer, overwritten for each frame, as a camera driver does
        assert hook(camera, {})[0] is camera
    engine.gate.set()
    assert hook.flush(timeout=20)
    for i in range(30):  # many more frames: the pool stays bounded, buffers are reused
        camera[:] = 60 + i
        hook(camera, {})
        assert hook.flush(timeout=20)
    report = hook.close()
    assert report.done == 33
    assert _values(tmp_path / "acquisition.ome.tif") == [51, 52, 53, *range(61, 91)]
    (slots,) = hook._buffers.slots.values()
    assert len(slots) <= cfg.queue_size + 2


def test_queue_output_equals_cyclesr_enhance_on_the_same_frames(tmp_path):
    """The built-in model (ONNX Runtime) behind a simulated acquisition faster than it: every
    frame is written, and the stack equals ``cyclesr enhance`` of the same frames."""
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from cyclesr_deploy.cli import app

    rng = np.random.default_rng(5)
    frames = [rng.poisson(200 + 40 * i, (96, 80)).astype(np.uint16) for i in range(8)]
    with AcquisitionHook(tmp_path / "hook", "reference-cyclegan") as hook:
        times = _acquire(hook, frames, [{"time": i} for i in range(8)], 0.001)
        assert hook.status().queued > 0  # the engine was behind
    assert hook.report.ok and hook.report.done == 8 and hook.report.skipped == 0
    assert max(times) < 1.0  # (the real bound, p99 < 5 ms, is benchmarks/hook_latency.py's)
    tifffile.imwrite(tmp_path / "acquisition.tif", np.stack(frames), photometric="minisblack")
    res = CliRunner().invoke(app, ["enhance", str(tmp_path / "acquisition.tif"), "-o",
                                   str(tmp_path / "enh")])  # fmt: skip
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "hook" / "acquisition.ome.tif"),
        tifffile.imread(tmp_path / "enh" / "acquisition.tif"),
    )


def test_a_new_frame_geometry_gets_its_own_stack_and_loses_nothing(tmp_path):
    """An ROI/binning change mid-run: the frames so far stay, the new geometry gets a stack."""
    frames = [_frame(i) for i in range(5)] + [_frame(50, (30, 20))] + [_frame(6), _frame(7)]
    with AcquisitionHook(tmp_path, engine=FakeEngine("plus1"), model_config=_model(),
                         enhance=WHOLE) as hook:  # fmt: skip
        _acquire(hook, frames, [{"time": i} for i in range(8)], 0)
    assert hook.report.ok and (hook.report.done, hook.report.failed) == (8, 0)
    assert _values(tmp_path / "acquisition.ome.tif") == [1, 2, 3, 4, 5, 7, 8]
    assert _values(tmp_path / "acquisition_30x20-uint16.ome.tif") == [51]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert sorted(e["frames"] for e in manifest["files"].values()) == [1, 7]
    assert {e["status"] for e in manifest["files"].values()} == {"done"}


def test_a_lost_part_is_reported_failed_with_its_frames(tmp_path, monkeypatch):
    """A write error on page 3 loses the .part (pages 0-2 cannot be read again): failed 4,
    never "done"; the writer is closed and page numbers never repeat."""
    made = fail_first_stack_append(monkeypatch, at=3)
    with AcquisitionHook(tmp_path, engine=FakeEngine("plus1"), model_config=_model(),
                         enhance=WHOLE) as hook:  # fmt: skip
        _acquire(hook, [_frame(i) for i in range(6)], [{"time": i} for i in range(6)], 0)
    report = hook.report
    assert not report.ok and (report.done, report.failed, report.seen) == (2, 4, 6)
    assert made[0]._tw is None  # the first writer was closed (Windows: its .part removable)
    assert _values(tmp_path / "acquisition.ome.tif") == [5, 6]
    (entry,) = json.loads((tmp_path / MANIFEST_NAME).read_text())["files"].values()
    assert entry["status"] == "failed" and entry["lost_frames"] == 3 and entry["error"]
    assert entry["page_axes"] == [{"pages": [0, 5], "time": [0, 5]}]  # each page once


def test_stack_names_that_clash_once_file_safe_get_a_number(tmp_path):
    channels = ["DAPI 1", "DAPI/1", "GFP", "gfp"]
    with AcquisitionHook(tmp_path, engine=FakeEngine("plus1"), model_config=_model(),
                         enhance=WHOLE) as hook:  # fmt: skip
        _acquire(hook, [_frame(i) for i in range(4)], [{"channel": c} for c in channels], 0)
    assert hook.report.ok
    names = sorted(p.name.casefold() for p in tmp_path.glob("*.ome.tif"))
    assert len(set(names)) == 4
    assert _values(tmp_path / "acquisition_channel-DAPI_1_2.ome.tif") == [2]
    assert _values(tmp_path / "acquisition_channel-gfp_2.ome.tif") == [4]


def test_on_frame_errors_fail_that_frame_and_the_rest_goes_on(tmp_path):
    def on_frame(path, page, latency):
        if page == 1:
            raise RuntimeError("viewer gone")

    with AcquisitionHook(tmp_path, engine=FakeEngine("plus1"), model_config=_model(),
                         enhance=WHOLE, on_frame=on_frame) as hook:  # fmt: skip
        _acquire(hook, [_frame(i) for i in range(4)], [{"time": i} for i in range(4)], 0)
    assert not hook.report.ok and hook.report.failed == 1 and hook.report.done == 4
    assert "viewer gone" in hook.errors[0]


def test_the_manifest_is_written_during_the_run_and_a_crash_keeps_its_name(tmp_path):
    (tmp_path / "acquisition.ome.tif.part").write_bytes(b"left by a crash")
    with AcquisitionHook(tmp_path, engine=FakeEngine("plus1"), model_config=_model(),
                         enhance=WHOLE) as hook:  # fmt: skip
        _acquire(hook, [_frame(i) for i in range(3)], [{"time": i} for i in range(3)], 0)
        assert hook.flush(timeout=20) and hook.name == "acquisition_1"
        deadline = time.perf_counter() + 10
        entry = None
        while entry is None and time.perf_counter() < deadline:  # written by the worker
            time.sleep(0.05)
            if (tmp_path / MANIFEST_NAME).is_file():
                files = json.loads((tmp_path / MANIFEST_NAME).read_text())["files"]
                entry = next((e for e in files.values() if e.get("frames") == 3), None)
        assert entry is not None and entry["page_axes"] == [{"pages": [0, 2], "time": [0, 2]}]
    assert (tmp_path / "acquisition.ome.tif.part").read_bytes() == b"left by a crash"


def test_no_filesystem_call_under_the_lock_and_a_failed_copy_frees_its_buffer(
    tmp_path, monkeypatch
):
    import pathlib

    from cyclesr_deploy.runtime import watch

    engine = GatedEngine()
    hook = AcquisitionHook(tmp_path, engine=engine, model_config=_model(), enhance=WHOLE,
                           config=HookConfig(queue_size=1))  # fmt: skip
    _acquire(hook, [_frame(0)], [{}], 0)
    assert engine.entered_infer.wait(10)
    calls, real = [], pathlib.Path.resolve
    monkeypatch.setattr(pathlib.Path, "resolve", lambda self, *a: calls.append(self) or real(self))
    _acquire(hook, [_frame(1 + i) for i in range(20)], [{}] * 20, 0)  # 19 skipped
    assert calls == []  # the manifest's key of the stack was resolved once, before
    monkeypatch.undo()

    def boom(*a, **k):
        raise MemoryError("no room")

    monkeypatch.setattr(np, "copyto", boom)
    frame = _frame(99)
    assert hook(frame, {})[0] is frame
    monkeypatch.undo()
    (slots,) = hook._buffers.slots.values()
    assert all(owner is not acquisition._RESERVED for _, owner in slots)
    monkeypatch.setattr(watch, "_RATE_WINDOW_S", 0.0)
    worker = hook.worker
    engine.gate.set()
    report = hook.close()
    assert (report.done, report.skipped, report.failed) == (2, 19, 1)
    assert len(worker.done_times) <= 1  # bounded even when status() is never called
