"""The OpenVINO engine against ONNX Runtime FP32 on the built-in model: tiles, frozen statistics,
the whole pipeline; auto picks it; compiled-model cache; precisions and the gate."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model
from cyclesr_deploy.engines import open_engine
from cyclesr_deploy.engines import openvino_engine as ove
from cyclesr_deploy.engines.frozen import OnnxFrozenEngine, OpenVINOFrozenEngine
from cyclesr_deploy.engines.onnxruntime_engine import OnnxRuntimeEngine
from cyclesr_deploy.engines.openvino_engine import OpenVINOEngine
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import EXPORT_JSON, load_model
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner

RANGE = 2.0  # the generator's output range [-1, 1]
TOL = 1e-4 * RANGE


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Compiled models of the built-in model go to the user cache: a temporary one here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_dir():
    return builtin_model(DEFAULT_MODEL)


def tiles(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (2, 1, 256, 192)).astype(np.float32),
            rng.uniform(-1, 1, (1, 1, 68, 92)).astype(np.float32)]  # fmt: skip


def test_openvino_matches_onnxruntime_fp32_on_tiles(model_dir):
    with OnnxRuntimeEngine(model_dir, providers="cpu") as ort, OpenVINOEngine(model_dir) as ov:
        assert ov.name == "openvino[CPU,fp32]"
        for x in tiles():
            ref = np.array(ort.infer(x), copy=True)
            y = ov.infer(x)
            assert y.shape == ref.shape
            assert np.abs(y - ref).max() <= TOL


def test_openvino_frozen_statistics_match_onnxruntime(model_dir):
    frame = np.random.default_rng(3).uniform(-1, 1, (1, 1, 512, 384)).astype(np.float32)
    x = tiles(4)[0]
    with OnnxFrozenEngine(model_dir) as ort, OpenVINOFrozenEngine(model_dir) as ov:
        for estimate in ("whole", "crops"):
            a, b = ort.frame_statistics(frame, estimate), ov.frame_statistics(frame, estimate)
            assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
        y_ref, y = ort.infer_with_stats(x, a), ov.infer_with_stats(x, a)
        assert np.abs(y - y_ref).max() <= TOL
        assert np.abs(ov.infer(x) - ort.infer(x)).max() <= TOL
        assert ov.pooled == ort.pooled and ov.length == ort.length


def in_model_range(frame: np.ndarray, model) -> np.ndarray:
    """``frame`` rescaled so that its 0.1/99.9 percentiles land on the model's training range
    (how real acquisitions look to the model)."""
    norm = model.normalization
    lo, hi = np.percentile(frame, [norm.pmin, norm.pmax])
    unit = (frame.astype(np.float64) - lo) / (hi - lo)
    return np.clip(norm.low_a + unit * (norm.high_a - norm.low_a), 0, 65535).astype(np.uint16)


def pipeline(model_dir, frame, cfg, backends=("onnxruntime", "openvino")):
    model = load_model(model_dir)
    outs = {}
    for backend in backends:
        with open_engine(model_dir, backend, precision="fp32", tiling=cfg.engine_tiling) as e:
            assert e.name.startswith(backend)
            outs[backend] = FrameRunner(e, model, cfg)(frame).astype(np.int64)
    return outs


@pytest.mark.parametrize(("shape", "tile"), [((1024, 1024), 0), ((1200, 1000), 512)])
def test_whole_pipeline_close_to_onnxruntime(model_dir, shape, tile):
    """Through the frame runner to uint16 (whole frame; tile 512 runs the 1200x1000 frame
    whole too, through the frozen engine's plain graph) on a micrograph in the model's range:
    within 3 uint16 levels of ONNX Runtime FP32, which is itself 3 levels from float64 here
    (OpenVINO: 1, see below; 8 from ONNX Runtime before the outer InstanceNorms were
    rewritten, engines/openvino_engine.precise_norms); under 1 level on average (0.47 and 0.75
    with the reference CycleGAN of issue 17, 0.4 with the earlier one)."""
    from tests.integration.test_cross_path import micrograph

    model = load_model(model_dir)
    frame = in_model_range(micrograph(shape, 1), model)
    cfg = EnhanceConfig(tile=tile, stats="whole")
    outs = pipeline(model_dir, frame, cfg)
    diff = np.abs(outs["openvino"] - outs["onnxruntime"])
    assert diff.max() <= 3 and diff.mean() <= 1.0, (diff.max(), diff.mean())


def float64_errors(model_dir, frame: np.ndarray) -> dict[str, float]:
    """Max error of ONNX Runtime and OpenVINO FP32 (whole ``frame``) against float64 PyTorch."""
    torch = pytest.importorskip("torch")
    from cyclesr_deploy.engines.torch_engine import TorchEngine

    model = load_model(model_dir)
    x = model.normalization.to_model(frame.astype(np.float32), "a")[None, None]
    with TorchEngine(model_dir, device="cpu", precision="fp32") as t, torch.no_grad():
        ref = t._net.double()(torch.from_numpy(x.astype(np.float64))).numpy()
    errors = {}
    for engine in (OnnxRuntimeEngine(model_dir, providers="cpu"), OpenVINOEngine(model_dir)):
        with engine:
            errors[engine.name.split("[")[0]] = float(np.abs(engine.infer(x) - ref).max())
    return errors


@pytest.mark.slow
def test_closer_to_float64_than_onnxruntime(model_dir):
    """The 1200x1000 micrograph, whole frame: OpenVINO FP32 within 1 uint16 level of float64
    PyTorch (2.1e-5; 4.1e-4 with the fused norms), ONNX Runtime FP32 1.3e-4 (3 levels)."""
    from tests.integration.test_cross_path import micrograph

    model = load_model(model_dir)
    errors = float64_errors(model_dir, in_model_range(micrograph((1200, 1000), 1), model))
    level = RANGE / (model.normalization.high_b - model.normalization.low_b)
    assert errors["openvino"] <= level and errors["openvino"] <= errors["onnxruntime"], errors


def test_output_barely_depends_on_the_thread_count(model_dir):
    """OpenVINO splits its reductions by thread; with the outer norms written as explicit
    two-pass ops a 1024^2 frame differs by 1 uint16 level at most between 1 and 2 threads
    (a synthetic 2048^2 frame: 16 levels with the fused norms, 1 rewritten)."""
    from tests.integration.test_cross_path import micrograph

    model = load_model(model_dir)
    frame = in_model_range(micrograph((1024, 1024), 1), model)
    outs = {}
    for threads in (1, 2):
        with open_engine(model_dir, "openvino", precision="fp32", threads=threads) as e:
            runner = FrameRunner(e, model, EnhanceConfig(tile=0, stats="whole"))
            outs[threads] = runner(frame).astype(np.int64)
    diff = np.abs(outs[1] - outs[2])
    assert diff.max() <= 1 and diff.mean() <= 0.05, (diff.max(), diff.mean())


@pytest.mark.slow
def test_frozen_tiles_close_to_onnxruntime(model_dir):
    """Frozen-statistics tiles (--whole-max-px 0): the same bounds."""
    from tests.integration.test_cross_path import micrograph

    model = load_model(model_dir)
    frame = in_model_range(micrograph((1024, 768), 2), model)
    cfg = EnhanceConfig(tile=512, stats="whole", whole_max_px=0)
    outs = pipeline(model_dir, frame, cfg)
    diff = np.abs(outs["openvino"] - outs["onnxruntime"])
    span = model.normalization.high_b - model.normalization.low_b
    assert diff.mean() <= 1e-4 * span and diff.max() <= 3e-4 * span, (diff.mean(), diff.max())


@pytest.mark.slow
def test_frames_far_outside_the_training_range_are_closer_to_float64(model_dir):
    """A frame far darker than the training data (mapped to about [-1.08, -0.97]): the first
    InstanceNorm amplifies rounding, so fp32 engines leave float64; OpenVINO (outer norms
    two-pass, engines/openvino_engine.precise_norms) stays closer than ONNX Runtime."""
    from tests.integration.test_cross_path import micrograph

    errors = float64_errors(model_dir, micrograph((512, 512), 1))
    assert errors["openvino"] <= errors["onnxruntime"], errors


def test_auto_picks_openvino_on_a_machine_without_an_nvidia_gpu(model_dir):
    from cyclesr_deploy.engines.select import cuda_device_count

    if cuda_device_count():
        pytest.skip("a CUDA device is present: auto picks a GPU engine")
    engine = open_engine(model_dir)
    assert isinstance(engine, OpenVINOEngine) and engine.selection.backend == "openvino"
    labels = [label for label, _ in engine.selection.rejected]
    assert labels[:3] == ["tensorrt", "onnxruntime-gpu", "torch-cuda"]
    tiled = open_engine(model_dir, tiling="frozen")
    assert isinstance(tiled, OpenVINOFrozenEngine)


def test_compiled_models_are_cached_outside_the_package(model_dir, tmp_path):
    cache = ove.cache_dir(model_dir)
    assert tmp_path / "cache" in cache.parents  # built-in models: the user cache
    with OpenVINOEngine(model_dir):
        pass
    assert any(cache.iterdir())
    own = tmp_path / "own"
    shutil.copytree(model_dir, own)
    assert ove.cache_dir(own) == own / "engines" / "openvino"


def test_bf16_refused_where_the_cpu_lacks_it(model_dir, monkeypatch):
    monkeypatch.setattr(ove, "capabilities", lambda device="CPU": ("FP32", "INT8"))
    with pytest.raises(InputError, match="avx512_bf16/AMX"):
        OpenVINOEngine(model_dir, precision="bf16")
    with pytest.raises(InputError, match="avx512_bf16/AMX"):
        open_engine(model_dir, "openvino", precision="bf16")


def test_auto_precision_follows_the_records_and_refuses_a_doctored_one(model_dir, tmp_path):
    """The built-in model's records (cyclesr export precision) pass the gate; the same folder
    with a doctored record over the threshold falls back, saying why."""
    from cyclesr_deploy.engines.precision import MAX_PSNR_LOSS_DB, read_records

    if not read_records(model_dir):
        pytest.skip("the built-in model has no precision records")
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    data = json.loads((folder / EXPORT_JSON).read_text("utf-8"))
    for rec in data["precisions"].values():
        rec["psnr_gt_db"] = rec["psnr_gt_fp32_db"] - 2 * MAX_PSNR_LOSS_DB
    (folder / EXPORT_JSON).write_text(json.dumps(data), "utf-8")
    for backend in ("openvino", "auto"):
        engine = open_engine(folder, backend, precision="auto")
        assert isinstance(engine, OpenVINOEngine) and engine.precision == "fp32"
        assert "no reduced precision passes" in engine.selection.reason
        refused = dict(engine.selection.rejected)
        assert refused["openvino-int8"].startswith("quality gate: PSNR vs ground truth -0.200")
    auto = open_engine(model_dir, "openvino", precision="auto")
    assert auto.precision in ("int8", "bf16")  # the real records pass the gate
    default = open_engine(model_dir, "openvino")  # reduced precision is opt-in: FP32
    assert default.precision == "fp32" and "--precision auto" in default.selection.reason


def test_reduced_precisions_run_and_are_close(model_dir, caplog):
    caps = ove.capabilities()
    x = tiles(5)[0]
    with OpenVINOEngine(model_dir) as fp32:
        ref = np.array(fp32.infer(x), copy=True)
    if "BF16" in caps:
        with caplog.at_level(logging.INFO), OpenVINOEngine(model_dir, precision="bf16") as e:
            y = e.infer(x)
        assert 0 < np.abs(y - ref).max() < 0.1  # really reduced, still close


def test_a_stale_int8_graph_is_refused_when_asked_for(model_dir, tmp_path):
    """`cyclesr export onnx --overwrite` leaves generator.int8.onnx of the old graph: an explicit
    int8 refuses it (the gate already did), naming the command that re-quantizes."""
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    data = json.loads((folder / EXPORT_JSON).read_text("utf-8"))
    data["precisions"]["openvino/int8"]["source_sha256"] = "0" * 64  # quantized from another
    (folder / EXPORT_JSON).write_text(json.dumps(data), "utf-8")
    for make in (lambda: OpenVINOEngine(folder, precision="int8"),
                 lambda: open_engine(folder, "openvino", precision="int8")):  # fmt: skip
        with pytest.raises(InputError, match="quantized from another generator") as err:
            make()
        assert f"cyclesr export precision {folder}" in str(err.value)
    del data["precisions"]["openvino/int8"]
    (folder / EXPORT_JSON).write_text(json.dumps(data), "utf-8")
    with pytest.raises(InputError, match="no precision record"):
        OpenVINOEngine(folder, precision="int8")


def test_fp16_on_the_cpu_is_refused_and_repr_names_the_class(model_dir):
    with pytest.raises(InputError, match="Intel GPU"):
        OpenVINOEngine(model_dir, precision="fp16")
    assert repr(OpenVINOFrozenEngine(model_dir)).startswith("OpenVINOFrozenEngine(")


def test_export_precision_records_both_frame_sizes_and_its_int8_runs(model_dir, tmp_path):
    """The record says the checked (``size``) and the timed (``time_size``) frame sides; the
    graph it has just quantized then runs by name (its record is current)."""
    pytest.importorskip("nncf")
    from cyclesr_deploy.export.precision_check import check_precisions

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    out = check_precisions(
        folder, ("int8",), frames=1, size=64, time_size=96, rounds=1, calibration=2
    )
    rec = out["records"]["openvino/int8"]
    assert (rec.frame_size, rec.time_frame_size) == (64, 96)
    OpenVINOEngine(folder, precision="int8")  # not refused: recorded from this generator.onnx


def test_precision_auto_reaches_whole_frames_of_the_frozen_engine_and_says_so(model_dir):
    """The default built-in model has frozen graphs, so a tiled run gets OpenVINO's frozen
    engine: `--precision auto` runs its whole frames at the gate's precision (it once ran them
    at FP32, silently), its frozen statistics and tiles at FP32, and the selection says both."""
    from cyclesr_deploy.engines.precision import read_records

    if not read_records(model_dir):
        pytest.skip("the built-in model has no precision records")
    gated = open_engine(model_dir, "openvino", precision="auto", tiling="auto")
    plain = open_engine(model_dir, "openvino", precision="auto")
    assert isinstance(gated, OpenVINOFrozenEngine)
    assert gated.whole_precision == plain.precision != "fp32"
    reason = gated.selection.reason
    assert f"frames that run whole: {plain.precision} (precision auto:" in reason
    assert "frozen statistics and tiles: fp32" in reason
    default = open_engine(model_dir, "openvino", tiling="auto")  # reduced precision is opt-in
    assert default.whole_precision == "fp32" and "frames that run whole: fp32" in str(
        default.selection.reason
    )
    ort = open_engine(model_dir, "onnxruntime", precision="auto", tiling="auto")
    assert "fp32 throughout" in ort.selection.reason
    x = tiles(6)[0][:1]
    with gated, default:
        y, ref = np.array(gated.infer(x), copy=True), default.infer(x)
    assert 0 < np.abs(y - ref).max() < 0.5  # really the reduced whole-frame graph, still close
