"""The streaming enhance pipeline with a fake engine (numpy only), and its intensity mapping."""

from __future__ import annotations

import json
import threading
import weakref

import numpy as np
import pytest
import tifffile
from pydantic import ValidationError

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.normalization import IntensityMapping, frame_percentiles
from cyclesr_deploy.runtime.manifest import LOCK_NAME
from cyclesr_deploy.runtime.pipeline import (
    MANIFEST_NAME,
    EnhanceConfig,
    collect_inputs,
    enhance_files,
)
from cyclesr_deploy.runtime.runner import FrameRunner
from cyclesr_deploy.runtime.tiff import FrameReader
from tests.conftest import FakeEngine

TILED = EnhanceConfig(tile=16, overlap=8, batch=3, whole_max_px=0)  # tiles even where whole fits


def _model(scale=1, low=0.0, high=1.0):
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=scale),
        normalization=NormalizationConfig(low_a=low, high_a=high, low_b=low, high_b=high),
    )


def _write(path, data, axes, **meta):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path, data, ome=True, photometric="minisblack", metadata={"axes": axes, **meta}
    )
    return path


def _stack(rng, shape=(4, 37, 45), dtype=np.uint16, high=60000):
    return rng.integers(0, high, shape).astype(dtype)


def _no_part_files(folder):
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


# --- exactness with fake engines -----------------------------------------------------------------
@pytest.mark.parametrize("cfg", [EnhanceConfig(), EnhanceConfig(tile=0), TILED], ids=str)
def test_identity_reproduces_uint16_exactly(tmp_path, rng, cfg):
    data = _stack(rng)
    src = _write(tmp_path / "in" / "a.tif", data, "TYX", PhysicalSizeX=0.2, PhysicalSizeY=0.2)
    engine = FakeEngine("identity")
    summary = enhance_files([src], tmp_path / "out", engine, _model(), cfg)
    assert summary.ok and summary.files[0].status == "done" and summary.frames == 4
    out = tifffile.imread(tmp_path / "out" / "a.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, data)
    if cfg.tile == 16:  # 37x45 -> 40x48 padded: 4 x 5 tiles of 16 (stride 8) per frame
        assert engine.calls > 4


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_plus_one_in_model_units_is_plus_one_in_raw_units(tmp_path, rng, dtype):
    # low 0, high 2 for both domains: model units are raw units shifted by 1
    if dtype == np.float32:
        data = rng.random((3, 20, 28), dtype=np.float32) * 100
    else:
        data = _stack(rng, (3, 20, 28), dtype, high=250)
        data.flat[0] = np.iinfo(dtype).max  # clipped at the dtype maximum
    src = _write(tmp_path / "in" / "a.tif", data, "ZYX")
    engine = FakeEngine("plus1")
    summary = enhance_files([src], tmp_path / "out", engine, _model(1, 0, 2), TILED)
    assert summary.ok
    out = tifffile.imread(tmp_path / "out" / "a.tif")
    assert out.dtype == dtype
    if dtype == np.float32:
        np.testing.assert_allclose(out, data + 1, rtol=1e-6, atol=1e-4)
    else:
        want = np.minimum(data.astype(np.int64) + 1, np.iinfo(dtype).max)
        np.testing.assert_array_equal(out, want)


def test_nearest_x2_doubles_the_grid_and_halves_the_pixel_size(tmp_path, rng):
    data = _stack(rng, (2, 3, 20, 24))
    src = _write(tmp_path / "in" / "a.ome.tif", data, "TZYX", PhysicalSizeX=0.2, PhysicalSizeY=0.2)
    engine = FakeEngine("nearest2")
    summary = enhance_files([src], tmp_path / "out", engine, _model(scale=2), TILED)
    assert summary.ok
    with tifffile.TiffFile(tmp_path / "out" / "a.ome.tif") as tif:
        out, axes, xml = tif.series[0].asarray(), tif.series[0].axes, tif.ome_metadata
    assert axes == "TZYX" and out.shape == (2, 3, 40, 48)
    np.testing.assert_array_equal(out, data.repeat(2, axis=2).repeat(2, axis=3))
    assert 'PhysicalSizeX="0.1"' in xml


def test_scale_mismatch_between_engine_and_model_is_refused(tmp_path, rng):
    src = _write(tmp_path / "in" / "a.tif", _stack(rng, (8, 8)), "YX")
    with pytest.raises(InputError, match="x2"):
        enhance_files([src], tmp_path / "out", FakeEngine("nearest2"), _model(), EnhanceConfig())


def test_a_batch_holds_the_tiles_of_one_frame(tmp_path, rng):
    # a frame's result never depends on its neighbours: batches never span two frames
    src = _write(tmp_path / "in" / "a.tif", _stack(rng, (5, 16, 16)), "TYX")
    engine = FakeEngine("identity")
    enhance_files([src], tmp_path / "out", engine, _model(), EnhanceConfig(batch=4))
    assert [s[0] for s in engine.shapes] == [1] * 5  # one whole-frame tile per frame
    src = _write(tmp_path / "in" / "b.tif", _stack(rng, (2, 40, 56)), "TYX")
    engine = FakeEngine("identity")
    cfg = EnhanceConfig(tile=16, overlap=8, batch=4)
    enhance_files([src], tmp_path / "out2", engine, _model(), cfg)
    per_frame = len(FrameRunner(engine, _model(), cfg).plan((40, 56)).tiles.tiles)
    assert per_frame % 4  # a partial last batch per frame
    want = [4] * (per_frame // 4) + [per_frame % 4]
    assert [s[0] for s in engine.shapes] == want * 2


def test_frame_normalization_uses_whole_frames(tmp_path, rng, monkeypatch):
    data = _stack(rng, (3, 37, 45))
    data[1] //= 7  # a dim frame: its own percentiles
    src = _write(tmp_path / "in" / "a.tif", data, "TYX")
    seen = []
    original = IntensityMapping.from_frame.__func__

    def spy(cls, frame, pmin, pmax):
        seen.append(frame.shape)
        return original(cls, frame, pmin, pmax)

    monkeypatch.setattr(IntensityMapping, "from_frame", classmethod(spy))
    cfg = EnhanceConfig(tile=16, overlap=8, normalize="frame")
    summary = enhance_files([src], tmp_path / "out", FakeEngine("identity"), _model(), cfg)
    assert summary.ok
    assert seen == [(37, 45)] * 3  # once per frame, on the whole frame (never per tile)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a.tif"), data)


# --- per-file errors, skipping, manifest ---------------------------------------------------------
def _mixed_inputs(folder, rng):
    good1 = _write(folder / "good1.tif", _stack(rng, (3, 16, 20)), "TYX")
    good2 = _write(folder / "good2.tif", _stack(rng, (24, 20)), "YX")
    full = _write(folder / "full.tif", _stack(rng, (5, 64, 64)), "TYX")
    trunc = folder / "truncated.tif"
    trunc.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    tifffile.imwrite(folder / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    nan = rng.random((2, 16, 16), dtype=np.float32)
    nan[1, 3, 3] = np.nan
    _write(folder / "nan.tif", nan, "TYX")
    with pytest.warns(UserWarning):
        tifffile.imwrite(folder / "empty.tif", np.zeros((0, 16), np.uint16))
    names = ["truncated.tif", "rgb.tif", "nan.tif", "empty.tif"]
    return [good1, *(folder / n for n in names), good2]


def test_bad_files_fail_alone(tmp_path, rng):
    inputs = _mixed_inputs(tmp_path / "in", rng)
    out = tmp_path / "out"
    summary = enhance_files(inputs, out, FakeEngine("identity"), _model(), TILED)
    status = {r.input.rsplit("/", 1)[-1]: r for r in summary.files}
    assert [r.input for r in summary.files] == [str(p) for p in inputs]  # input order
    assert status["good1.tif"].status == status["good2.tif"].status == "done"
    assert status["good1.tif"].frames == 3
    for name, msg in [
        ("truncated.tif", "incomplete"),
        ("rgb.tif", "RGB"),
        ("nan.tif", "NaN"),
        ("empty.tif", "2-D"),
    ]:
        assert status[name].status == "failed", name
        assert msg in status[name].error and name in status[name].error
    assert not summary.ok
    left = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)  # kept on POSIX only
    assert left == [MANIFEST_NAME, "good1.tif", "good2.tif"]  # lock released: no LOCK_INFO
    assert _no_part_files(tmp_path)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["config"]["tile"] == 16
    recorded = {k.rsplit("/", 1)[-1]: v["status"] for k, v in manifest["files"].items()}
    assert recorded["nan.tif"] == "failed" and recorded["good2.tif"] == "done"


def test_engine_error_fails_that_file_only(tmp_path, rng):
    a = _write(tmp_path / "in" / "a.tif", _stack(rng, (6, 16, 16)), "TYX")
    b = _write(tmp_path / "in" / "b.tif", _stack(rng, (2, 16, 16)), "TYX")
    engine = FakeEngine("plus1", raise_at=2)  # the second batch of a.tif
    summary = enhance_files([a, b], tmp_path / "out", engine, _model(), EnhanceConfig(batch=2))
    assert [f.status for f in summary.files] == ["failed", "done"]
    assert "fake engine failure" in summary.files[0].error
    assert not (tmp_path / "out" / "a.tif").exists() and (tmp_path / "out" / "b.tif").exists()
    assert _no_part_files(tmp_path)


def test_output_folder_equal_to_input_folder_is_refused(tmp_path, rng):
    src = _write(tmp_path / "a.tif", _stack(rng, (8, 8)), "YX")
    with pytest.raises(InputError, match="folder of input"):
        enhance_files([src], tmp_path, FakeEngine(), _model())
    with pytest.raises(InputError, match="both write"):
        other = _write(tmp_path / "x" / "a.tif", _stack(rng, (8, 8)), "YX")
        enhance_files([src, other], tmp_path / "out", FakeEngine(), _model())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "x"]


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, rng):
    src = _write(tmp_path / "in" / "a.tif", _stack(rng, (2, 8, 8)), "TYX")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.tif").write_bytes(b"not mine")
    engine = FakeEngine()
    summary = enhance_files([src], tmp_path / "out", engine, _model())
    assert summary.files[0].status == "skipped" and "exists" in summary.files[0].note
    assert summary.ok and engine.calls == 0
    assert (tmp_path / "out" / "a.tif").read_bytes() == b"not mine"
    summary = enhance_files(
        [src], tmp_path / "out", engine, _model(), EnhanceConfig(overwrite=True)
    )
    assert summary.files[0].status == "done"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a.tif"), tifffile.imread(src))


def test_manifest_resume(tmp_path, rng):
    inputs = [_write(tmp_path / "in" / f"{i}.tif", _stack(rng, (2, 8, 8)), "TYX") for i in range(3)]
    out = tmp_path / "out"
    first = enhance_files(inputs, out, FakeEngine(), _model())
    assert [f.status for f in first.files] == ["done"] * 3
    engine = FakeEngine()
    second = enhance_files(inputs, out, engine, _model())
    assert [f.status for f in second.files] == ["skipped"] * 3 and engine.calls == 0
    assert all("earlier run" in f.note for f in second.files)
    (out / "1.tif").unlink()
    engine = FakeEngine()
    third = enhance_files(inputs, out, engine, _model())
    assert [f.status for f in third.files] == ["skipped", "done", "skipped"]
    assert engine.calls == 2  # the two frames of 1.tif, one call each
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    entries = list(manifest["files"].values())
    assert [e["status"] for e in entries] == ["done"] * 3
    assert all(e["input_size"] > 0 and e["input_mtime_ns"] > 0 for e in entries)


def test_keyboard_interrupt_leaves_only_complete_files(tmp_path, rng):
    a = _write(tmp_path / "in" / "a.tif", _stack(rng, (2, 16, 16)), "TYX")
    b = _write(tmp_path / "in" / "b.tif", _stack(rng, (8, 16, 16)), "TYX")
    c = _write(tmp_path / "in" / "c.tif", _stack(rng, (2, 16, 16)), "TYX")
    engine = FakeEngine(raise_at=4, exc=KeyboardInterrupt())  # b.tif, mid-stack
    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        enhance_files([a, b, c], tmp_path / "out", engine, _model(), EnhanceConfig(batch=1))
    assert threading.active_count() == before  # every stage thread has ended
    left = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != LOCK_NAME)
    assert left == ["a.tif", MANIFEST_NAME]  # the lock was released: no LOCK_INFO_NAME
    assert _no_part_files(tmp_path)
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert [v["status"] for v in manifest["files"].values()] == ["done"]
    # the next run picks up where this one stopped
    summary = enhance_files([a, b, c], tmp_path / "out", FakeEngine(), _model())
    assert [f.status for f in summary.files] == ["skipped", "done", "done"]


def test_memory_is_bounded_by_the_queues(tmp_path, rng, monkeypatch):
    n = 48
    src = _write(tmp_path / "in" / "long.tif", _stack(rng, (n, 16, 16)), "TYX")
    alive, peak = [0], [0]
    lock = threading.Lock()
    original = FrameReader.read

    def release():
        with lock:
            alive[0] -= 1

    def spy(self, index):
        frame = original(self, index)
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        weakref.finalize(frame, release)
        return frame

    monkeypatch.setattr(FrameReader, "read", spy)
    engine = FakeEngine(delay=0.002)  # slower than reading: the reader must wait
    cfg = EnhanceConfig(batch=1, queue_size=2)
    summary = enhance_files([src], tmp_path / "out", engine, _model(), cfg)
    assert summary.files[0].frames == n
    assert peak[0] <= 6, peak[0]  # queue (2) + one per stage; never the whole stack


def test_engine_limits_are_adapted_to_or_checked_once_up_front(tmp_path, rng):
    src = _write(tmp_path / "in" / "a.tif", _stack(rng, (8, 8)), "YX")
    # batch and tile larger than a static engine allows are reduced to its limits
    summary = enhance_files(
        [src], tmp_path / "o1", FakeEngine(max_batch=2), _model(), EnhanceConfig(batch=4)
    )
    assert summary.ok
    summary = enhance_files([src], tmp_path / "o2", FakeEngine(max_tile=(256, 256)), _model())
    assert summary.ok
    big = _write(tmp_path / "in" / "big.tif", _stack(rng, (300, 40)), "YX")
    engine = FakeEngine(max_tile=(256, 256))
    summary = enhance_files([big], tmp_path / "o", engine, _model(), EnhanceConfig(tile=0))
    assert summary.files[0].status == "failed" and "256x256" in summary.files[0].error


def test_config_validation():
    with pytest.raises(ValidationError):
        EnhanceConfig(batch=0)
    with pytest.raises(ValidationError):
        EnhanceConfig(normalize="stack")
    with pytest.raises(InputError, match="multiple of"):
        EnhanceConfig(tile=30).tiling(_model())
    big_rf = ModelConfig(generator=GeneratorConfig(n_blocks=9))
    with pytest.raises(InputError, match="too small for receptive field"):
        EnhanceConfig(tile=128).tiling(big_rf)
    tiling = EnhanceConfig(tile=256, overlap=40).tiling(big_rf)
    assert (tiling.overlap, tiling.halo) == (40, 20)
    whole = EnhanceConfig(tile=0).tiling(big_rf, (37, 45))
    assert whole.tile_shape == (40, 48) and whole.overlap == 0


def test_collect_inputs(tmp_path, rng):
    folder = tmp_path / "in"
    for name in ("b.tif", "a.TIFF", "c.tif.part", "notes.txt", "sub/d.tif"):
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    got = collect_inputs([folder, folder / "b.tif", str(folder / "*.tif")])
    assert [p.name for p in got] == ["a.TIFF", "b.tif"]  # sorted, de-duplicated, not recursive
    with pytest.raises(InputError, match="no such file"):
        collect_inputs([tmp_path / "missing.tif"])
    with pytest.raises(InputError, match="matches no"):
        collect_inputs([str(folder / "*.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        collect_inputs([tmp_path / "empty"])


# --- intensity mapping ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_frame_percentiles_match_numpy(rng, dtype):
    x = _stack(rng, (61, 53), dtype, high=250 if dtype == np.uint8 else 60000)
    if dtype == np.float32:
        x = rng.normal(size=(61, 53)).astype(np.float32)
    for pmin, pmax in [(0.1, 99.9), (1, 99.8), (0, 100), (3, 50)]:
        got = frame_percentiles(x, pmin, pmax)
        np.testing.assert_allclose(got, np.percentile(x, [pmin, pmax]), rtol=0, atol=1e-6)


def test_mapping_matches_normalization_config_bit_for_bit(rng):
    norm = NormalizationConfig(low_a=123.4, high_a=40000.5, low_b=10.0, high_b=50000.0)
    mapping = IntensityMapping.from_config(norm)
    x = _stack(rng, (33, 47))
    np.testing.assert_array_equal(mapping.before(x), norm.to_model(x, "a"))
    y = rng.uniform(-1.2, 1.2, (33, 47)).astype(np.float32)
    raw = norm.from_model(y, "b")
    np.testing.assert_array_equal(mapping.after(y, np.float32), raw)
    u16 = mapping.after(y, np.uint16)
    np.testing.assert_array_equal(u16, np.clip(np.rint(raw), 0, 65535).astype(np.uint16))
    assert u16.min() == 0  # -1.2 maps below 0: clipped
    buf = mapping.before(x).copy()
    assert mapping.after(buf, np.float32, inplace=True) is buf


def test_flat_frame_mapping_is_finite():
    mapping = IntensityMapping.from_frame(np.full((8, 8), 7, np.uint16), 0.1, 99.9)
    y = mapping.before(np.full((8, 8), 7, np.uint16))
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(mapping.after(y, np.uint16), 7)


def test_fit_to_engine_caps_batch_and_tile_for_static_engines():
    from cyclesr_deploy.engines.base import TensorSpec
    from cyclesr_deploy.runtime.pipeline import EnhanceConfig, fit_to_engine

    def spec(max_batch=None, max_tile=None, min_tile=None):
        return TensorSpec(
            "input",
            (None, 1, None, None),
            np.dtype("float32"),
            4,
            1,
            max_batch=max_batch,
            max_tile=max_tile,
            min_tile=min_tile,
        )

    cfg = EnhanceConfig(tile=512, batch=8)
    assert fit_to_engine(cfg, spec()) is cfg  # ONNX Runtime / torch: unchanged
    static = fit_to_engine(cfg, spec(max_batch=4, max_tile=(256, 256), min_tile=(256, 256)))
    assert (static.tile, static.batch) == (256, 4)
    small = EnhanceConfig(tile=128, batch=2)
    dynamic = fit_to_engine(small, spec(max_batch=4, max_tile=(512, 512), min_tile=(64, 64)))
    assert (dynamic.tile, dynamic.batch) == (128, 2)
    whole = EnhanceConfig(tile=0)
    assert fit_to_engine(whole, spec(max_tile=(256, 256))).tile == 0


def test_cli_whole_frame_budget_default_is_the_pipelines():
    import inspect

    from cyclesr_deploy.cli.enhance import enhance
    from cyclesr_deploy.cli.watch import watch
    from cyclesr_deploy.runtime.pipeline import WHOLE_MAX_PX

    for command in (enhance, watch):
        default = inspect.signature(command).parameters["whole_max_px"].default
        assert default.default == WHOLE_MAX_PX == EnhanceConfig().whole_max_px
