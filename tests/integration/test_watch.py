"""``cyclesr watch`` end to end with a writer process and a fake engine (numpy only, fast).

The writer (tests/integration/_watch_writer.py, a separate process) writes frame files in
chunks, one file that stays truncated and a stack that grows page by page. Every frame value
identifies its input; the fake engine adds 1, so each output says which input it came from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.runtime.pipeline import MANIFEST_NAME, EnhanceConfig
from cyclesr_deploy.runtime.watch import WatchConfig, watch_folder
from tests.conftest import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
FAST = WatchConfig(poll=0.05, stable=0.2, idle=5.0, use_events=False)
WHOLE = EnhanceConfig(tile=0)


def _model():  # model units = raw - 1, so plus1 in model units is +1 in raw units
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=1),
        normalization=NormalizationConfig(low_a=0, high_a=2, low_b=0, high_b=2),
    )


def _start_writer(tmp: Path, files: list[dict], name: str = "plan") -> subprocess.Popen:
    plan = {"dir": str(tmp / "in"), "done_flag": str(tmp / f"{name}.done"), "files": files}
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    (tmp / f"{name}.json").write_text(json.dumps(plan))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration._watch_writer", str(tmp / f"{name}.json")],
        cwd=ROOT,
    )


def _stop_when(stop: threading.Event, cond, timeout: float = 20.0) -> threading.Thread:
    def run() -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            time.sleep(0.02)
        stop.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _values(path: Path) -> list[int]:
    data = tifffile.imread(path)
    data = data.reshape(-1, *data.shape[-2:])
    return [int(np.median(f)) for f in data]


def _no_part(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_every_complete_frame_once_in_order_truncated_reported(tmp_path):
    files = [{"name": f"a{i:02d}.tif", "value": 100 + i, "chunks": 4} for i in range(4)]
    files.insert(2, {"name": "broken.tif", "kind": "truncated", "value": 999, "chunks": 2})
    files.append({"name": "stack.tif", "kind": "stack", "values": [200, 201, 202, 203]})
    files += [{"name": f"b{i:02d}.tif", "value": 300 + i, "chunks": 3} for i in range(3)]
    writer = _start_writer(tmp_path, files)
    seen: list[tuple[str, int]] = []
    stop = threading.Event()
    expected = (
        [(f"a{i:02d}.tif", 0) for i in range(4)]
        + [("stack.tif", p) for p in range(4)]
        + [(f"b{i:02d}.tif", 0) for i in range(3)]
    )
    _stop_when(stop, lambda: writer.poll() is not None and len(seen) >= len(expected))
    engine = FakeEngine("plus1", delay=0.005)
    final = watch_folder(
        tmp_path / "in",
        tmp_path / "out",
        engine,
        _model(),
        FAST,
        WHOLE,
        stop=stop,
        on_frame=lambda p, page, _lat: seen.append((p.name, page)),
    )
    assert writer.wait(10) == 0
    assert seen == expected  # exactly once, in arrival order
    out = tmp_path / "out"
    for i in range(4):
        assert _values(out / f"a{i:02d}.tif") == [101 + i]
    assert _values(out / "stack.tif") == [201, 202, 203, 204]
    assert not (out / "broken.tif").exists()
    assert final.failed == 0 and final.done == len(expected)
    assert final.incomplete_files == ("broken.tif",)
    manifest = json.loads((out / MANIFEST_NAME).read_text())["files"]
    broken = manifest[str((tmp_path / "in" / "broken.tif").resolve())]
    assert broken["status"] == "incomplete" and "truncated" in broken["error"]
    assert manifest[str((tmp_path / "in" / "stack.tif").resolve())]["frames"] == 4
    assert _no_part(out)


def test_stop_and_restart_no_duplicates_no_gaps(tmp_path):
    files = [
        {"name": f"a{i:02d}.tif", "value": 100 + i, "chunks": 2, "pause": 0.08} for i in range(6)
    ]
    files.insert(3, {"name": "stack.tif", "kind": "stack", "values": [200 + i for i in range(6)]})
    files[3]["page_pause"] = 0.15
    writer = _start_writer(tmp_path, files)
    seen: list[tuple[str, int]] = []
    cfg = FAST.model_copy(update={"idle": 60.0})

    def run(stop_cond) -> None:
        stop = threading.Event()
        _stop_when(stop, stop_cond)
        watch_folder(
            tmp_path / "in",
            tmp_path / "out",
            FakeEngine("plus1", delay=0.01),
            _model(),
            cfg,
            WHOLE,
            stop=stop,
            on_frame=lambda p, page, _lat: seen.append((p.name, page)),
        )

    # first run: stopped while the stack is half written
    run(lambda: ("stack.tif", 1) in seen)
    first = list(seen)
    out = tmp_path / "out"
    assert _no_part(out)
    assert 1 <= len(_values(out / "stack.tif")) < 6  # closed (renamed) with the pages so far
    # second run: until the writer is done and every frame is written
    run(lambda: writer.poll() is not None and len(seen) >= 12)
    assert writer.wait(10) == 0
    assert len(seen) == len(set(seen)) == 12, seen  # no duplicates across the two runs
    assert sorted(seen) == sorted(
        [(f"a{i:02d}.tif", 0) for i in range(6)] + [("stack.tif", p) for p in range(6)]
    )
    assert len(first) < 12
    assert _values(out / "stack.tif") == [201 + i for i in range(6)]  # no gap, in order
    for i in range(6):
        assert _values(out / f"a{i:02d}.tif") == [101 + i]
    assert _no_part(out)
    # a third run finds nothing to do
    before = len(seen)
    run(lambda: True)
    assert len(seen) == before


def test_latest_policy_skips_are_recorded_never_silent(tmp_path):
    files = [{"name": f"a{i:02d}.tif", "value": 100 + i, "chunks": 1} for i in range(12)]
    writer = _start_writer(tmp_path, files)
    seen: list[str] = []
    stop = threading.Event()
    cfg = FAST.model_copy(update={"when_behind": "latest", "stable": 0.05, "poll": 0.02})
    final_box = {}

    def finished() -> bool:
        st = final_box.get("status")
        return writer.poll() is not None and st is not None and st.done + st.skipped >= 12

    _stop_when(stop, finished)
    final = watch_folder(
        tmp_path / "in",
        tmp_path / "out",
        FakeEngine("plus1", delay=0.25),  # far slower than the writer
        _model(),
        cfg,
        WHOLE,
        stop=stop,
        on_status=lambda s: final_box.__setitem__("status", s),
        status_every=0.01,
        on_frame=lambda p, _page, _lat: seen.append(p.name),
    )
    assert final.skipped > 0 and final.done + final.skipped == 12
    assert seen == sorted(seen) and len(seen) == len(set(seen))  # newest first, never back
    assert seen[-1] == "a11.tif"  # the newest frame is always processed
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    statuses = {Path(k).name: v["status"] for k, v in manifest.items()}
    assert sorted(n for n, s in statuses.items() if s == "done") == seen
    skipped = sorted(n for n, s in statuses.items() if s == "skipped")
    assert len(skipped) == final.skipped and not set(skipped) & set(seen)
    for name in skipped:
        assert not (tmp_path / "out" / name).exists()


_SIGINT_CHILD = """
import sys
import cyclesr_deploy.engines as engines
import cyclesr_deploy.model as model_mod
from cyclesr_deploy.cli import app
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from tests.conftest import FakeEngine

engines.open_engine = lambda *a, **k: FakeEngine("plus1", delay=0.05)
model_mod.load_model = lambda _d: ModelConfig(
    generator=GeneratorConfig(ngf=4, n_blocks=0, scale=1),
    normalization=NormalizationConfig(low_a=0, high_a=2, low_b=0, high_b=2),
)
sys.argv = ["cyclesr", *sys.argv[1:]]
app()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_cli_sigint_finishes_and_exits_0(tmp_path):
    """Ctrl-C on a running ``cyclesr watch`` (a child process, as a user's terminal sends it):
    the frames already found are finished, the manifest written, no .part left, exit 0."""
    (tmp_path / "in").mkdir()
    for i in range(3):
        f = np.full((32, 32), 10 + i, np.uint16)
        tifffile.imwrite(tmp_path / "in" / f"x{i}.tif", f, photometric="minisblack")
    past = time.time() - 10
    for p in (tmp_path / "in").iterdir():
        os.utime(p, (past, past))
    (tmp_path / "m").mkdir()  # a model folder (its model.json is faked in the child)
    args = ["watch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model"]
    args += [str(tmp_path / "m"), "--tile", "0", "--poll", "0.05", "--stable", "0.1", "--polling"]
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_CHILD, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and not (tmp_path / "out" / "x2.tif").exists():
            assert child.poll() is None, child.communicate()[0]
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, output
    assert _values(tmp_path / "out" / "x2.tif") == [13]
    assert (tmp_path / "out" / MANIFEST_NAME).is_file()
    assert _no_part(tmp_path / "out")


def _model2():  # scale 2 (FakeEngine nearest2): outputs show the pixel size divided by 2
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=2),
        normalization=NormalizationConfig(low_a=0, high_a=2, low_b=0, high_b=2),
    )


def test_chunk_written_plain_frames_come_out_as_2d_ome_frames(tmp_path):
    """Defect (a): one page written in pieces with 0.3-0.8 s pauses is a frame, not a stack."""
    from cyclesr_deploy.runtime.tiff import open_frames

    pauses = [0.3, 0.8, 0.5]
    files = [
        {"name": f"p{i}.tif", "kind": "plain", "value": 50 + i, "chunks": 4,
         "chunk_pauses": pauses, "pixel_size": 0.4}
        for i in range(2)
    ]  # fmt: skip
    writer = _start_writer(tmp_path, files)
    stop = threading.Event()
    seen: list[tuple[str, int]] = []
    _stop_when(stop, lambda: writer.poll() is not None and len(seen) >= 2, timeout=30)
    final = watch_folder(
        tmp_path / "in",
        tmp_path / "out",
        FakeEngine("nearest2"),
        _model2(),
        FAST.model_copy(update={"stable": 1.0}),
        WHOLE,
        stop=stop,
        on_frame=lambda p, page, _lat: seen.append((p.name, page)),
    )
    assert writer.wait(10) == 0
    assert seen == [("p0.tif", 0), ("p1.tif", 0)] and final.ok
    for i in range(2):
        out = tmp_path / "out" / f"p{i}.tif"
        with tifffile.TiffFile(out) as tif:
            assert tif.is_ome and tif.series[0].axes == "YX"
        with open_frames(out) as reader:  # what `cyclesr enhance` reads
            assert reader.info.axes == "YX" and reader.info.shape == (128, 128)
            assert reader.info.pixel_size_um == pytest.approx(0.2)
            assert int(np.median(reader.read(0))) == 50 + i


def test_growing_stack_keeps_axes_and_pixel_size(tmp_path):
    """Defect (e): a growing stack comes out TYX with the pixel size / scale, never QYX."""
    from cyclesr_deploy.runtime.tiff import open_frames

    files = [{"name": "s.tif", "kind": "stack", "values": [10, 11, 12], "pixel_size": 0.3}]
    writer = _start_writer(tmp_path, files)
    stop = threading.Event()
    seen: list[tuple[str, int]] = []
    _stop_when(stop, lambda: writer.poll() is not None and len(seen) >= 3)
    final = watch_folder(
        tmp_path / "in", tmp_path / "out", FakeEngine("nearest2"), _model2(), FAST, WHOLE,
        stop=stop, on_frame=lambda p, page, _lat: seen.append((p.name, page)),
    )  # fmt: skip
    assert final.ok and len(seen) == 3
    with open_frames(tmp_path / "out" / "s.tif") as reader:
        assert reader.info.axes == "TYX" and reader.info.shape == (3, 128, 128)
        assert reader.info.pixel_size_um == pytest.approx(0.15)
        assert [int(np.median(f.data)) for f in reader] == [10, 11, 12]


def _old(path: Path) -> None:
    past = time.time() - 30
    os.utime(path, (past, past))


def test_unusable_files_fail_by_name_with_enhances_message_and_are_retried(tmp_path):
    """Defects (b) and (c): C > 1, RGB, zero-byte and non-TIFF files fail (not 'incomplete'
    forever) with the shared reader's message; a failed file that changes is tried again."""
    from cyclesr_deploy.errors import InputError
    from cyclesr_deploy.runtime.tiff import open_frames

    inp = tmp_path / "in"
    inp.mkdir()
    two_c = np.zeros((2, 3, 2, 16, 16), np.uint16)
    tifffile.imwrite(inp / "tzcyx.ome.tif", two_c, ome=True, metadata={"axes": "TZCYX"})
    tifffile.imwrite(inp / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    (inp / "empty.tif").write_bytes(b"")
    (inp / "text.tif").write_bytes(b"this is no TIFF")
    tifffile.imwrite(inp / "good.tif", np.full((16, 16), 4, np.uint16))
    for p in inp.iterdir():
        _old(p)
    cfg = FAST.model_copy(update={"exit_idle": 0.5})
    final = watch_folder(inp, tmp_path / "out", FakeEngine("plus1"), _model(), cfg, WHOLE)
    assert (final.done, final.failed, final.incomplete) == (1, 4, 0) and not final.ok
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    entries = {Path(k).name: v for k, v in manifest.items()}
    for name in ("tzcyx.ome.tif", "rgb.tif", "empty.tif", "text.tif"):
        assert entries[name]["status"] == "failed"
        with pytest.raises(InputError) as enhance_says:  # what `cyclesr enhance` reports
            open_frames(inp / name)
        assert entries[name]["error"] == str(enhance_says.value), name
    assert "2 channels" in entries["tzcyx.ome.tif"]["error"]
    assert "RGB" in entries["rgb.tif"]["error"]
    # the zero-byte file is written later: tried again, done; the run is ok for it
    tifffile.imwrite(inp / "empty.tif", np.full((16, 16), 8, np.uint16))
    _old(inp / "empty.tif")
    final = watch_folder(inp, tmp_path / "out", FakeEngine("plus1"), _model(), cfg, WHOLE)
    assert _values(tmp_path / "out" / "empty.tif") == [9]
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    assert manifest[str((inp / "empty.tif").resolve())]["status"] == "done"


def test_retry_within_one_run_after_a_failed_file_changes(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "late.tif").write_bytes(b"")
    _old(inp / "late.tif")
    stop = threading.Event()
    boxes: dict = {}

    def fix_when_failed() -> bool:
        st = boxes.get("status")
        if st is not None and st.failed and not boxes.get("fixed"):
            tifffile.imwrite(inp / "late.tif", np.full((16, 16), 3, np.uint16))
            boxes["fixed"] = True
        return (tmp_path / "out" / "late.tif").exists()

    _stop_when(stop, fix_when_failed)
    final = watch_folder(
        inp, tmp_path / "out", FakeEngine("plus1"), _model(), FAST, WHOLE, stop=stop,
        on_status=lambda s: boxes.__setitem__("status", s), status_every=0.02,
    )  # fmt: skip
    assert boxes.get("fixed") and final.failed == 0 and final.ok
    assert _values(tmp_path / "out" / "late.tif") == [4]


@pytest.mark.parametrize("bad", [False, True])
def test_cli_exit_code_is_partial_when_a_frame_failed(tmp_path, monkeypatch, bad):
    """Defect (d): exit 0 only when every frame succeeded, else enhance's EXIT_PARTIAL."""
    from typer.testing import CliRunner

    import cyclesr_deploy.engines as engines
    import cyclesr_deploy.model as model_mod
    from cyclesr_deploy.cli import app
    from cyclesr_deploy.cli._common import EXIT_PARTIAL

    monkeypatch.setattr(engines, "open_engine", lambda *a, **k: FakeEngine("plus1"))
    monkeypatch.setattr(model_mod, "load_model", lambda _d: _model())
    inp = tmp_path / "in"
    inp.mkdir()
    tifffile.imwrite(inp / "ok.tif", np.full((16, 16), 2, np.uint16))
    if bad:
        tifffile.imwrite(inp / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    for p in inp.iterdir():
        _old(p)
    (tmp_path / "m").mkdir()
    args = ["watch", str(inp), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "m")]
    args += ["--tile", "0", "--poll", "0.05", "--stable", "0.1", "--polling"]
    args += ["--exit-idle", "0.5", "--tiling", "naive", "--whole-max-px", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == (EXIT_PARTIAL if bad else 0), result.output
    assert _values(tmp_path / "out" / "ok.tif") == [3]
