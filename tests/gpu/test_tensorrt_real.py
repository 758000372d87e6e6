"""Real TensorRT engines on a CUDA GPU, checked against ONNX Runtime CPU.

Marked ``tensorrt``; every test skips without TensorRT (``pytest.importorskip("tensorrt")``),
cuda-python or a CUDA device, so the file is collected and skipped on CPU-only machines.
A tiny random-weight generator (ngf 8, 2 blocks) is exported with the project's exporter
(``onnx_from_checkpoint``, ``fp16_onnx_from_onnx``) into a temporary model folder.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from cyclesr_deploy import cuda_runtime
from cyclesr_deploy.engines.trt_config import EngineMismatchError, TensorRTBuildConfig
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import (
    ONNX_FILES,
    WEIGHTS,
    GeneratorConfig,
    ModelConfig,
    save_model_config,
)

pytestmark = pytest.mark.tensorrt

FP32_TOL = 1e-2  # TF32 convolutions are allowed in "fp32" engines (TensorRT's default)
FP16_TOL = 5e-2  # output range [-1, 1]; the full H200 generator measured 9.3e-3 max abs in FP16


@pytest.fixture(scope="module")
def trt():
    module = pytest.importorskip("tensorrt")
    if not cuda_runtime.cuda_available():
        pytest.skip("no CUDA device (or cuda-python missing)")
    return module


@pytest.fixture(scope="module")
def model_dir(trt, tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cyclesr_deploy.export import onnx_from_checkpoint
    from cyclesr_deploy.nets import build_generator

    folder = tmp_path_factory.mktemp("trt") / "tiny model"
    gen = GeneratorConfig(ngf=8, n_blocks=2)
    save_model_config(folder, ModelConfig(generator=gen))
    net = build_generator(gen, generator=torch.Generator().manual_seed(0))
    torch.save(net.state_dict(), folder / WEIGHTS["ab"])
    onnx_from_checkpoint(folder, dynamo=importlib.util.find_spec("onnxscript") is not None)
    return folder


@pytest.fixture(scope="module")
def fp16_onnx(model_dir):
    pytest.importorskip("onnxconverter_common")
    from cyclesr_deploy.export import fp16_onnx_from_onnx

    return fp16_onnx_from_onnx(model_dir / ONNX_FILES["ab"]).path


def ort_reference(onnx_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def build_cfg(tmp_path, **kw) -> TensorRTBuildConfig:
    return TensorRTBuildConfig(timing_cache_dir=tmp_path / "cache", opt_level=1, **kw)


def tiles(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def test_gpu_facts_describe_this_machine(trt):
    from cyclesr_deploy.engines.tensorrt_load import gpu_facts

    facts = gpu_facts()
    assert facts.name and facts.trt_version == trt.__version__
    major, minor = facts.compute_capability.split(".")
    assert int(major) >= 7 and minor.isdigit()


def test_fp32_engine_matches_onnxruntime(trt, model_dir, tmp_path):
    from cyclesr_deploy.engines.tensorrt_load import load_engine
    from cyclesr_deploy.export.tensorrt_build import engine_from_onnx

    built = engine_from_onnx(model_dir, build_cfg(tmp_path, precision="fp32", tile=64, batch=2))
    assert not built.skipped and built.engine_path.stat().st_size > 0
    engine = load_engine(built.engine_path)
    x = tiles((2, 1, 64, 64))
    y = cuda_runtime.infer_once(engine, x)
    ref = ort_reference(model_dir / ONNX_FILES["ab"], x)
    assert y.shape == ref.shape
    assert float(np.abs(y - ref).max()) < FP32_TOL


def test_fp16_engine_matches_onnxruntime_and_is_cached(trt, model_dir, fp16_onnx, tmp_path):
    from cyclesr_deploy.engines.tensorrt_load import load_engine
    from cyclesr_deploy.export.tensorrt_build import engine_from_onnx

    settings = build_cfg(tmp_path, precision="fp16", tile=64, batch=2)
    built = engine_from_onnx(model_dir, settings)
    assert built.sidecar.strongly_typed and built.sidecar.onnx_file == fp16_onnx.name
    x = tiles((2, 1, 64, 64), seed=1)
    y = cuda_runtime.infer_once(load_engine(built.engine_path), x)
    ref = ort_reference(model_dir / ONNX_FILES["ab"], x)
    err = float(np.abs(y - ref).max())
    rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    assert np.isfinite(y).all() and err < FP16_TOL and rel < 1e-2, (err, rel)
    again = engine_from_onnx(model_dir, settings)
    assert again.skipped and again.engine_path == built.engine_path


def test_dynamic_engine_runs_several_shapes(trt, model_dir, tmp_path):
    from cyclesr_deploy.engines.tensorrt_load import load_engine
    from cyclesr_deploy.export.tensorrt_build import engine_from_onnx

    settings = build_cfg(
        tmp_path, precision="fp32", dynamic=True, tile=64, batch=2, min_tile=32, max_tile=128
    )
    engine = load_engine(engine_from_onnx(model_dir, settings).engine_path)
    for shape in [(1, 1, 32, 96), (2, 1, 128, 64), (2, 1, 64, 64)]:
        x = tiles(shape, seed=sum(shape))
        ref = ort_reference(model_dir / ONNX_FILES["ab"], x)
        assert float(np.abs(cuda_runtime.infer_once(engine, x) - ref).max()) < FP32_TOL
    with pytest.raises(InputError, match="optimization profile"):
        cuda_runtime.infer_once(engine, tiles((1, 1, 256, 256)))


def test_engine_from_another_gpu_is_refused(trt, model_dir, tmp_path):
    from cyclesr_deploy.engines.tensorrt_load import load_engine
    from cyclesr_deploy.export.tensorrt_build import engine_from_onnx

    built = engine_from_onnx(model_dir, build_cfg(tmp_path, precision="fp32", tile=32, batch=1))
    data = json.loads(built.sidecar_path.read_text(encoding="utf-8"))
    data["gpu_name"], data["compute_capability"] = "Some Other GPU", "1.0"
    built.sidecar_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(EngineMismatchError, match="cyclesr export tensorrt"):
        load_engine(built.engine_path)


@pytest.mark.gpu
def test_cuda_runtime_round_trip_on_device():
    if not cuda_runtime.cuda_available():
        pytest.skip("no CUDA device (or cuda-python missing)")
    data = np.arange(4096, dtype=np.float32).reshape(64, 64)
    with (
        cuda_runtime.Stream() as stream,
        cuda_runtime.DeviceBuffer(data.nbytes) as dev,
        cuda_runtime.PinnedBuffer(data.shape, data.dtype) as pinned,
    ):
        cuda_runtime.memcpy_htod_async(dev, data, stream)
        cuda_runtime.memcpy_dtoh_async(pinned, dev, stream)
        stream.synchronize()
        np.testing.assert_array_equal(pinned.array, data)
    info = cuda_runtime.device_properties(0)
    assert info.name and info.total_memory > 0


def test_frozen_statistics_engines_make_tiling_match_the_whole_frame(trt, model_dir, tmp_path):
    """Seam-free tiling on TensorRT: statistics engine on the whole frame, tile engine with
    those statistics; the tiled frame matches ONNX Runtime's whole-frame output."""
    pytest.importorskip("torch")
    from cyclesr_deploy.engines.tensorrt_frozen import TensorRTFrozenEngine
    from cyclesr_deploy.export.frozen_onnx import (
        stats_onnx_from_checkpoint,
        tile_onnx_from_checkpoint,
    )
    from cyclesr_deploy.export.tensorrt_frozen import frozen_engines_from_onnx
    from cyclesr_deploy.model import load_model
    from cyclesr_deploy.runtime.tiling import TilingConfig, predict_tiled

    stats_onnx_from_checkpoint(model_dir, overwrite=True)
    tile_onnx_from_checkpoint(model_dir, overwrite=True)
    cfg = build_cfg(tmp_path, precision="fp32", tile=128, batch=2)
    frozen_engines_from_onnx(model_dir, (256, 256), cfg)
    frame = tiles((256, 256), seed=3)
    whole = ort_reference(model_dir / ONNX_FILES["ab"], frame[None, None])[0, 0]
    model = load_model(model_dir)
    tcfg = TilingConfig.for_model(model.receptive_field, tile=128, batch_size=2, ramp=8)
    with TensorRTFrozenEngine(model_dir, frames=[(256, 256)]) as engine:
        stats = engine.frame_statistics(frame[None, None])
        tiled = predict_tiled(frame, lambda b: engine.infer_with_stats(b, stats).copy(), tcfg)
    assert float(np.abs(tiled - whole).max()) < FP32_TOL
