"""Seam-free tiling on TensorRT (frozen-statistics engines) against FAKE ``tensorrt`` and
cuda-python (no GPU): the build of both engines, their choice, and the two-pass runtime.

The fake statistics engine returns (mean, var) of the frame alternating; the fake tile engine
computes ``input * 2 + 1 + sum(stats)`` from the statistics in its static input
(tests/fakes.py), so a stale or missing upload shows in the output.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from cyclesr_deploy.engines import FrozenStatsEngine
from cyclesr_deploy.engines.frozen_stats import MAX_CROPS
from cyclesr_deploy.engines.tensorrt_frozen import TensorRTFrozenEngine
from cyclesr_deploy.engines.tensorrt_load import find_engine
from cyclesr_deploy.engines.trt_config import TensorRTBuildConfig
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.export import tensorrt_build as tb
from cyclesr_deploy.export.tensorrt_frozen import frozen_engines_from_onnx, stats_build_config
from cyclesr_deploy.model import (
    FROZEN_ONNX,
    ONNX_FILES,
    GeneratorConfig,
    ModelConfig,
    save_model_config,
)
from tests.fakes import cudaMemcpyKind, fake_machine, install_fake_cuda, install_fake_trt

L = 8
HTOD = int(cudaMemcpyKind.cudaMemcpyHostToDevice)


@pytest.fixture
def rt(monkeypatch):
    runtime = install_fake_cuda(monkeypatch)
    yield runtime
    gc.collect()
    assert runtime.device == {} and runtime.host == {}, "leak"


@pytest.fixture(params=["10.13.0.35", "11.0.0"])
def trt(request, monkeypatch, rt):
    fake_machine(monkeypatch)
    trt = install_fake_trt(monkeypatch, request.param)
    copy = rt.cudaMemcpyAsync

    def logged_copy(dst, src, count, kind, stream):
        trt.state.calls.append(("memcpy", int(kind), count))
        return copy(dst, src, count, kind, stream)

    rt.cudaMemcpyAsync = logged_copy
    return trt


def model_folder(tmp_path):
    folder = tmp_path / "model"
    save_model_config(folder, ModelConfig(generator=GeneratorConfig(ngf=8, n_blocks=1)))
    for name, text in (
        (ONNX_FILES["ab"], "fake-onnx fp32"),
        (FROZEN_ONNX["stats"], f"fake-onnx fp32 frozen-stats L={L} weights={MAX_CROPS}"),
        (FROZEN_ONNX["tile"], f"fake-onnx fp32 frozen-tile L={L}"),
    ):
        (folder / name).write_text(text, encoding="utf-8")
    return folder


CFG = TensorRTBuildConfig(tile=64, batch=4, precision="fp32", timing_cache_dir=None)


def test_builds_both_engines_with_their_profiles(trt, tmp_path):
    folder = model_folder(tmp_path)
    stats, tile = frozen_engines_from_onnx(folder, (126, 126), CFG)
    assert stats.sidecar.onnx_file == FROZEN_ONNX["stats"]
    assert tile.sidecar.onnx_file == FROZEN_ONNX["tile"]
    # the frame is padded to the size multiple (4): one static batch-1 profile
    p = stats.sidecar.profiles[0]
    assert p.min == p.opt == p.max == (1, 1, 128, 128)
    assert tile.sidecar.profiles[0].max == (4, 1, 64, 64)
    assert stats.sidecar.output_name == "stats"
    again = frozen_engines_from_onnx(folder, (126, 126), CFG)
    assert all(b.skipped for b in again)  # identical second build: nothing rebuilt


def test_non_square_frames_get_a_dynamic_statistics_profile():
    cfg = stats_build_config(CFG, (1000, 1366), 4)
    assert cfg.batch == 1 and cfg.dynamic
    assert (cfg.min_tile, cfg.tile, cfg.max_tile) == (1000, 1368, 1368)
    assert not stats_build_config(CFG, (62, 64), 4).dynamic  # both pad to 64
    with pytest.raises(InputError, match="both >= 1"):
        stats_build_config(CFG, (0, 64), 4)


def test_refuses_fp16_and_missing_graphs(trt, tmp_path):
    folder = model_folder(tmp_path)
    with pytest.raises(InputError, match="FP32"):
        frozen_engines_from_onnx(folder, (64, 64), CFG.model_copy(update={"precision": "fp16"}))
    (folder / FROZEN_ONNX["tile"]).unlink()
    with pytest.raises(InputError, match="cyclesr export onnx"):
        frozen_engines_from_onnx(folder, (64, 64), CFG)


def test_two_pass_inference_uploads_statistics_once_per_frame(trt, tmp_path):
    folder = model_folder(tmp_path)
    frozen_engines_from_onnx(folder, (128, 128), CFG)
    rng = np.random.default_rng(0)
    frame = rng.uniform(-1, 1, (1, 1, 128, 128)).astype(np.float32)
    with TensorRTFrozenEngine(folder, frames=[(128, 128)]) as engine:
        assert isinstance(engine, FrozenStatsEngine)
        assert engine.name == "tensorrt[fp32,frozen-stats]"
        assert engine.input_spec.max_batch == 4 and engine.input_spec.max_tile == (64, 64)
        stats = engine.frame_statistics(frame)
        assert stats.shape == (L,)
        np.testing.assert_allclose(stats[0::2], frame.mean(), rtol=1e-5)
        np.testing.assert_allclose(stats[1::2], frame.var(), rtol=1e-5)
        trt.state.calls.clear()
        for _ in range(3):  # three tile batches of one frame: one upload
            x = rng.uniform(-1, 1, (4, 1, 64, 64)).astype(np.float32)
            np.testing.assert_allclose(engine.infer_with_stats(x, stats), x * 2 + 1 + stats.sum())
        uploads = [c for c in trt.state.calls if c[:2] == ("memcpy", HTOD) and c[2] == 4 * L]
        assert len(uploads) == 1
        other = stats + 1  # the next frame's statistics are uploaded before its tiles run
        np.testing.assert_allclose(engine.infer_with_stats(x, other), x * 2 + 1 + other.sum())
        with pytest.raises(InputError, match="takes 8"):
            engine.infer_with_stats(x, np.zeros(3, np.float32))


def test_plain_infer_uses_each_samples_own_statistics(trt, tmp_path):
    folder = model_folder(tmp_path)
    frozen_engines_from_onnx(folder, (64, 64), CFG)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)
    with TensorRTFrozenEngine(folder) as engine:
        y = engine.infer(x)
    for i in range(2):
        s = x[i].mean() * (L // 2) + x[i].var() * (L // 2)
        np.testing.assert_allclose(y[i], x[i] * 2 + 1 + s, rtol=1e-5)


def test_frame_outside_the_statistics_profile_names_the_build_command(trt, tmp_path):
    folder = model_folder(tmp_path)
    frozen_engines_from_onnx(folder, (128, 128), CFG)
    with pytest.raises(InputError, match="--frozen --precision fp32 --frame 256 256"):
        TensorRTFrozenEngine(folder, frames=[(256, 256)])


def test_generator_engine_choice_ignores_the_frozen_engines(trt, tmp_path):
    folder = model_folder(tmp_path)
    own = tb.engine_from_onnx(folder, CFG)
    frozen_engines_from_onnx(folder, (64, 64), CFG)  # built later: newer files
    assert find_engine(folder).engine_path == own.engine_path
    tile = find_engine(folder, graph=FROZEN_ONNX["tile"]).engine_path
    assert tile != own.engine_path


def test_export_cli_builds_the_frozen_engines(trt, tmp_path):
    from typer.testing import CliRunner

    from cyclesr_deploy.cli import app

    folder = model_folder(tmp_path)
    args = ["export", "tensorrt", str(folder), "--frozen", "--frame", "96", "128"]
    res = CliRunner().invoke(app, [*args, "--tile", "64", "--batch", "2"])
    assert res.exit_code == 0, res.output
    assert "TensorRT stats" in res.output and "TensorRT tile" in res.output
    with TensorRTFrozenEngine(
        folder, frames=[(96, 128), (128, 100)]
    ) as engine:  # dynamic: 96..128 px
        assert engine.precision == "fp32" and engine.input_spec.max_batch == 2
    res = CliRunner().invoke(app, [*args, "--precision", "fp16"])
    assert res.exit_code == 2 and "FP32" in res.output


@pytest.fixture
def one_gpu(monkeypatch):
    """open_engine's probes see one CUDA device and TensorRT installed."""
    from cyclesr_deploy.engines import select as sel

    monkeypatch.setattr(sel, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(sel, "module_available", lambda name: name != "torch")


def test_enhance_auto_prefers_the_tensorrt_frozen_engines(trt, one_gpu, tmp_path):
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.engines.frozen import open_frozen_engine

    folder = model_folder(tmp_path)
    with pytest.raises(InputError, match="no TensorRT engine"):  # none built yet
        open_engine(folder, "tensorrt", tiling="auto")
    frozen_engines_from_onnx(folder, (128, 128), CFG)
    engine = open_engine(folder, tiling="auto", frames=[(128, 128)])
    assert isinstance(engine, TensorRTFrozenEngine)
    unknown = open_engine(folder, tiling="auto")  # watch, Enhancer: frame sizes unknown
    assert not isinstance(unknown, TensorRTFrozenEngine)
    assert engine.selection.backend == "tensorrt" and "TensorRT" in engine.selection.frozen
    assert isinstance(open_frozen_engine(folder, "tensorrt"), TensorRTFrozenEngine)
    with pytest.raises(InputError, match="fp32 only"):
        open_frozen_engine(folder, "tensorrt", precision="fp16")


def test_enhance_falls_back_when_no_statistics_engine_holds_the_inputs(
    trt, one_gpu, tmp_path, caplog
):
    from cyclesr_deploy.engines import open_engine

    folder = model_folder(tmp_path)
    frozen_engines_from_onnx(folder, (128, 128), CFG)  # static 128 x 128 statistics engine
    other = open_engine(folder, tiling="auto", frames=[(96, 96)])
    assert not isinstance(other, TensorRTFrozenEngine)  # ONNX Runtime's frozen engine instead
    assert "frozen" in other.name and not other.selection.warnings
    with pytest.raises(InputError, match="no TensorRT engine"):  # no plain engine either
        open_engine(folder, "tensorrt", tiling="auto", frames=lambda: [(96, 96)])
    assert "--frame 96 96" in " ".join(caplog.text.split())  # the warning says how to build
    engine = open_engine(folder, tiling="auto", frames=[(128, 128)])
    assert isinstance(engine, TensorRTFrozenEngine)
