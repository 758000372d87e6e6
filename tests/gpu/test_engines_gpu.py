"""The engines on a CUDA GPU, checked against ONNX Runtime on the CPU (FP32 reference).

Marked ``gpu`` (and ``tensorrt`` for the TensorRT engine); every test skips without the package
it needs or a CUDA device, so the file is collected and skipped on CPU-only machines.
A tiny random-weight generator (ngf 8, 2 blocks) is exported to FP32 and FP16 ONNX in a
temporary model folder.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cyclesr_deploy.engines import OnnxRuntimeEngine, TorchEngine, open_engine
from cyclesr_deploy.engines import select as sel
from cyclesr_deploy.model import (
    ENGINES_DIR,
    ONNX_FILES,
    ORT_TRT_CACHE,
    WEIGHTS,
    GeneratorConfig,
    ModelConfig,
    save_model_config,
)

pytestmark = pytest.mark.gpu

TF32_TOL = 1e-2  # cuDNN/TensorRT may use TF32 for "fp32" convolutions (their default)
FP16_TOL = 5e-2  # output range [-1, 1]; InstanceNorm in FP32


@pytest.fixture(scope="module")
def cuda():
    if sel.cuda_device_count() == 0:
        pytest.skip("no CUDA device")


@pytest.fixture(scope="module")
def torch_cuda(cuda):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


@pytest.fixture(scope="module")
def model_dir(cuda, tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxconverter_common")
    from cyclesr_deploy.export import fp16_onnx_from_onnx, onnx_from_checkpoint
    from cyclesr_deploy.nets import build_generator

    folder = tmp_path_factory.mktemp("gpu-engines") / "model"
    gen = GeneratorConfig(ngf=8, n_blocks=2)
    save_model_config(folder, ModelConfig(generator=gen))
    net = build_generator(gen, generator=torch.Generator().manual_seed(0))
    torch.save(net.state_dict(), folder / WEIGHTS["ab"])
    onnx_from_checkpoint(folder, dynamo=importlib.util.find_spec("onnxscript") is not None)
    fp16_onnx_from_onnx(folder / ONNX_FILES["ab"])
    return folder


def tiles(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def reference(model_dir, x):
    with OnnxRuntimeEngine(model_dir, providers="cpu") as engine:
        return engine.infer(x).copy()


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max())


# --- PyTorch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_cuda_fp32_and_fp16(torch_cuda, model_dir, channels_last):
    x = tiles((2, 1, 128, 96))
    ref = reference(model_dir, x)
    with TorchEngine(model_dir, device="cuda", channels_last=channels_last) as engine:
        assert engine.name.startswith("torch[cuda")
        y32 = engine.infer(x).copy()
    with TorchEngine(
        model_dir, device="cuda", precision="fp16", channels_last=channels_last
    ) as engine:
        assert "fp16" in engine.name
        first = engine.infer(x)
        y16 = first.copy()
        second = engine.infer(tiles((2, 1, 128, 96), seed=1))
        assert second is first  # pinned output per shape, reused (buffer contract)
    assert y32.shape == y16.shape == (2, 1, 128, 96) and y16.dtype == np.float32
    assert max_abs(y32, ref) <= TF32_TOL
    assert max_abs(y16, y32) <= FP16_TOL
    assert np.isfinite(y16).all()


@pytest.mark.slow
def test_torch_cuda_compiled(torch_cuda, model_dir):
    x = tiles((2, 1, 64, 64))
    with TorchEngine(model_dir, device="cuda", compile="default") as engine:
        assert engine.name == "torch[cuda,compiled]"
        assert max_abs(engine.infer(x), reference(model_dir, x)) <= TF32_TOL


# --- ONNX Runtime GPU -----------------------------------------------------------------------------


def _needs_provider(provider: str) -> None:
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        pytest.skip(f"{provider} not available (onnxruntime-gpu not installed)")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_ep_parity(model_dir, precision):
    _needs_provider("CUDAExecutionProvider")
    x = tiles((2, 1, 128, 96))
    ref = reference(model_dir, x)
    with OnnxRuntimeEngine(
        model_dir, providers=["CUDAExecutionProvider"], precision=precision
    ) as e:
        assert e.providers[0] == "CUDAExecutionProvider", "silently fell back to the CPU"
        assert e._bindings is not None  # I/O binding on the GPU
        first = e.infer(x)
        y = first.copy()
        assert e.infer(x) is first
    assert max_abs(y, ref) <= (TF32_TOL if precision == "fp32" else FP16_TOL)


@pytest.mark.tensorrt
def test_onnxruntime_tensorrt_ep_parity_and_cache(model_dir):
    _needs_provider("TensorrtExecutionProvider")
    x = tiles((1, 1, 64, 64))
    with OnnxRuntimeEngine(model_dir, providers="cuda") as engine:
        if engine.providers[0] != "TensorrtExecutionProvider":
            pytest.skip(f"TensorRT EP fell back to {engine.providers[0]} (libnvinfer not found)")
        y = engine.infer(x).copy()
    assert max_abs(y, reference(model_dir, x)) <= TF32_TOL
    assert any((model_dir / ENGINES_DIR / ORT_TRT_CACHE).iterdir())


# --- TensorRT -------------------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.parametrize(("precision", "tol"), [("fp32", TF32_TOL), ("fp16", FP16_TOL)])
def test_tensorrt_engine_matches_onnxruntime_cpu(model_dir, tmp_path, precision, tol):
    pytest.importorskip("tensorrt")
    from cyclesr_deploy.engines.trt_config import TensorRTBuildConfig
    from cyclesr_deploy.export import engine_from_onnx

    cfg = TensorRTBuildConfig(
        tile=64, batch=2, precision=precision, opt_level=1, timing_cache_dir=tmp_path
    )
    built = engine_from_onnx(model_dir, cfg)
    engine = open_engine(model_dir, precision=precision)
    assert engine.selection.backend == "tensorrt"
    assert engine.engine_path == built.engine_path and engine.name == f"tensorrt[{precision}]"
    with engine:
        assert engine.input_spec.max_batch == 2 and engine.input_spec.max_tile == (64, 64)
        for n in (2, 1):  # 1: padded to the static batch
            x = tiles((n, 1, 64, 64), seed=n)
            y = engine.infer(x)
            assert y.shape == (n, 1, 64, 64) and y.dtype == np.float32
            assert max_abs(y, reference(model_dir, x)) <= tol


def test_auto_picks_a_gpu_backend_on_this_gpu(torch_cuda, model_dir):
    engine = open_engine(model_dir)
    labels = [label for label, _ in engine.selection.rejected]
    assert "torch-cuda" not in labels  # torch sees the GPU, so a GPU candidate was chosen
    with engine:
        if engine.selection.backend == "onnxruntime":
            assert engine.providers[0] != "CPUExecutionProvider", engine.selection
        else:
            assert engine.name.startswith(("tensorrt", "torch[cuda"))
        assert engine.infer(tiles((1, 1, 64, 64))).shape == (1, 1, 64, 64)
