"""The CPU engines on real exported models: ONNX Runtime (CPU) vs PyTorch (CPU), selection.

Module fixtures: a tiny CycleGAN trained for two steps and exported to FP32 (dynamo) and FP16
ONNX, and a random-weight scale-2 generator exported with the TorchScript exporter.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cyclesr_deploy.model import EXPORT_JSON, MODEL_JSON, ONNX_FILES

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cyclesr_deploy.engines import (  # noqa: E402
    Engine,
    OnnxRuntimeEngine,
    TorchEngine,
    check_batch_shape,
    open_engine,
)
from cyclesr_deploy.engines import select as sel  # noqa: E402
from cyclesr_deploy.engines.torch_engine import fp16_with_fp32_norms  # noqa: E402
from cyclesr_deploy.errors import InputError, MissingExtraError  # noqa: E402
from cyclesr_deploy.model import (  # noqa: E402
    WEIGHTS,
    GeneratorConfig,
    ModelConfig,
    save_model_config,
)

PARITY_TOL = 1e-4  # FP32, output range [-1, 1]
SHAPES = [(1, 1, 64, 64), (2, 1, 64, 96), (3, 1, 32, 128), (4, 1, 8, 8)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.tiny_models import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("engines"), onnx=True, fp16=True)


@pytest.fixture(scope="module")
def scale2_dir(tmp_path_factory):
    from cyclesr_deploy.export import onnx_from_checkpoint
    from cyclesr_deploy.nets import build_generator

    folder = tmp_path_factory.mktemp("engines-x2") / "model"
    gen = GeneratorConfig(ngf=4, n_blocks=1, scale=2)
    save_model_config(folder, ModelConfig(generator=gen))
    net = build_generator(gen, generator=torch.Generator().manual_seed(0))
    torch.save(net.state_dict(), folder / WEIGHTS["ab"])
    onnx_from_checkpoint(folder, dynamo=False, parity_sizes=[(1, 64, 64)], synthetic_sizes=[])
    return folder


def tiles(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def run_all(engine: Engine, shapes) -> list[np.ndarray]:
    outs = []
    with engine:
        for i, shape in enumerate(shapes):
            check_batch_shape(engine.input_spec, shape)
            outs.append(engine.infer(tiles(shape, seed=i)).copy())
    return outs


@pytest.mark.parametrize("scale", [1, 2])
def test_onnxruntime_cpu_and_torch_cpu_agree(model_dir, scale2_dir, scale):
    folder = model_dir if scale == 1 else scale2_dir
    ort_engine = OnnxRuntimeEngine(folder, providers="cpu")
    torch_engine = TorchEngine(folder, device="cpu")
    for engine in (ort_engine, torch_engine):
        assert isinstance(engine, Engine)
        spec = engine.input_spec
        assert (spec.name, spec.scale, spec.size_multiple, spec.channels) == ("input", scale, 4, 1)
    ours = run_all(ort_engine, SHAPES)
    ref = run_all(torch_engine, SHAPES)
    for shape, a, b in zip(SHAPES, ours, ref, strict=True):
        n, c, h, w = shape
        assert a.shape == b.shape == (n, c, h * scale, w * scale)
        assert a.dtype == b.dtype == np.float32
        assert float(np.abs(a - b).max()) <= PARITY_TOL, shape
    assert ort_engine.name == "onnxruntime[CPUExecutionProvider]"
    assert torch_engine.name == "torch[cpu]"


def test_io_binding_on_cpu_gives_the_same_result(model_dir):
    plain = run_all(OnnxRuntimeEngine(model_dir, providers="cpu"), SHAPES)
    bound = run_all(OnnxRuntimeEngine(model_dir, providers="cpu", io_binding=True), SHAPES)
    for a, b in zip(plain, bound, strict=True):
        np.testing.assert_array_equal(a, b)


def test_buffer_contract(model_dir):
    x1, x2 = tiles((2, 1, 64, 96), 1), tiles((2, 1, 64, 96), 2)
    # plain ONNX Runtime and PyTorch on the CPU: a new array per call
    for engine in (OnnxRuntimeEngine(model_dir), TorchEngine(model_dir, device="cpu")):
        with engine:
            first = engine.infer(x1)
            kept = first.copy()
            second = engine.infer(x2)
            np.testing.assert_array_equal(first, kept)
            assert not np.shares_memory(first, second)
    # I/O binding: one output array per shape, overwritten by the next call (documented)
    with OnnxRuntimeEngine(model_dir, io_binding=True) as engine:
        first = engine.infer(x1)
        kept = first.copy()
        second = engine.infer(x2)
        assert second is first and not np.array_equal(first, kept)


def test_context_manager_releases_and_reopens(model_dir):
    ort_engine = OnnxRuntimeEngine(model_dir)
    with ort_engine as opened:
        assert opened is ort_engine and ort_engine.session is not None
    assert ort_engine.session is None
    torch_engine = TorchEngine(model_dir, device="cpu")
    with torch_engine:
        assert torch_engine.module is not None
    assert torch_engine.module is None
    for engine in (ort_engine, torch_engine):
        with pytest.raises(RuntimeError, match="closed"):
            engine.infer(tiles((1, 1, 64, 64)))
        with engine:
            assert engine.infer(tiles((1, 1, 64, 64))).shape == (1, 1, 64, 64)


def test_onnxruntime_fp16_onnx_runs_on_cpu(model_dir):
    x = tiles((2, 1, 64, 96))
    with OnnxRuntimeEngine(model_dir, precision="fp16") as engine:
        assert engine.name == "onnxruntime[CPUExecutionProvider,fp16]"
        y16 = engine.infer(x)
    with OnnxRuntimeEngine(model_dir) as engine:
        y32 = engine.infer(x)
    assert y16.dtype == np.float32 and float(np.abs(y16 - y32).max()) < 1e-2


def test_bare_onnx_file_reads_its_embedded_config(model_dir, scale2_dir, tmp_path):
    onnx = tmp_path / "elsewhere.onnx"
    shutil.copy(scale2_dir / ONNX_FILES["ab"], onnx)
    with OnnxRuntimeEngine(onnx) as engine:
        assert engine.input_spec.scale == 2 and engine.precision == "fp32"
        assert engine.infer(tiles((1, 1, 32, 32))).shape == (1, 1, 64, 64)


def test_onnx_from_another_model_is_refused(model_dir, scale2_dir, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(model_dir, folder)
    shutil.copy(scale2_dir / ONNX_FILES["ab"], folder / ONNX_FILES["ab"])
    with pytest.raises(InputError, match="sha256 differs"):  # export.json's record
        OnnxRuntimeEngine(folder).__enter__()
    (folder / EXPORT_JSON).unlink()  # a hand-made folder: the ONNX metadata still catches it
    with pytest.raises(InputError, match="another generator"):
        OnnxRuntimeEngine(folder).__enter__()


def test_torch_threads_channels_last_and_compile(model_dir, monkeypatch):
    x = tiles((2, 1, 64, 96))
    with TorchEngine(model_dir, device="cpu") as engine:
        ref = engine.infer(x)
    before = torch.get_num_threads()
    with TorchEngine(model_dir, device="cpu", threads=1, channels_last=True) as engine:
        assert torch.get_num_threads() == 1
        assert engine.name == "torch[cpu,channels_last]"
        assert float(np.abs(engine.infer(x) - ref).max()) <= PARITY_TOL
    assert torch.get_num_threads() == before
    compiled = []

    def fake_compile(fn, **kw):
        compiled.append(kw)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    with TorchEngine(model_dir, device="cpu", compile=True) as engine:
        assert engine.name == "torch[cpu,compiled]"
        np.testing.assert_array_equal(engine.infer(x), ref)
    assert compiled == [{"mode": "default", "dynamic": False}]


def test_torch_fp16_keeps_instance_norm_in_fp32(model_dir):
    from torch import nn

    from cyclesr_deploy.nets import build_generator

    with pytest.raises(InputError, match=r"fp16.*cuda"):
        TorchEngine(model_dir, device="cpu", precision="fp16")
    net = build_generator(
        GeneratorConfig(ngf=4, n_blocks=1), generator=torch.Generator().manual_seed(0)
    )
    x = torch.from_numpy(tiles((1, 1, 64, 64)))
    with torch.inference_mode():
        ref = net(x)
        half = fp16_with_fp32_norms(net)
        y = half(x.half()).float()
    convs = [m for m in half.modules() if isinstance(m, nn.Conv2d)]
    wrapped = 0
    for name, module in half.named_modules():
        if isinstance(module, nn.InstanceNorm2d):
            parent = half.get_submodule(name.rsplit(".", 1)[0])
            assert type(parent).__name__ == "Float32Norm"
            wrapped += 1
    assert wrapped == 7  # 3 encoder + 2 in the residual block + 2 decoder
    assert all(m.weight.dtype == torch.float16 for m in convs)
    assert float((y - ref).abs().max()) < 2e-2  # FP16 convs on the CPU, InstanceNorm in FP32


def test_torch_weights_for_another_architecture(model_dir, tmp_path):
    folder = tmp_path / "wrong"
    shutil.copytree(model_dir, folder)
    save_model_config(folder, ModelConfig(generator=GeneratorConfig(ngf=8, n_blocks=1)))
    with pytest.raises(InputError, match="does not fit the generator"):
        TorchEngine(folder, device="cpu").__enter__()


# --- open_engine --------------------------------------------------------------------------------


def test_auto_on_this_cpu_machine_picks_openvino_else_onnxruntime_cpu(model_dir):
    if sel.cuda_device_count() or sel.module_available("tensorrt"):
        pytest.skip("this machine has a GPU or TensorRT")
    engine = open_engine(model_dir)
    sel_ = engine.selection
    gpu = ["tensorrt", "onnxruntime-gpu", "torch-cuda"]
    if sel.module_available("openvino"):  # the tiny model has no precision records: fp32
        assert sel_.backend == "openvino" and engine.name == "openvino[CPU,fp32]"
        assert [label for label, _ in sel_.rejected][:3] == gpu
        assert "fp32 (the default" in sel_.reason  # reduced precision is opt-in
        auto = open_engine(model_dir, precision="auto").selection  # no records: the gate says so
        assert "no reduced precision passes" in auto.reason
        return
    assert sel_.backend == "onnxruntime" and isinstance(engine, OnnxRuntimeEngine)
    assert [label for label, _ in sel_.rejected] == [*gpu, "openvino-cpu"]
    reasons = dict(sel_.rejected)
    assert reasons["tensorrt"].startswith("TensorRT not installed")
    assert reasons["torch-cuda"] == "no CUDA device"
    with engine:
        assert engine.name == "onnxruntime[CPUExecutionProvider]"
        assert engine.infer(tiles((2, 1, 64, 96))).shape == (2, 1, 64, 96)


def test_explicit_backends_through_open_engine(model_dir):
    x = tiles((2, 1, 64, 96))
    outs = {}
    for backend in ("onnxruntime", "torch"):
        with open_engine(model_dir, backend, device="cpu", threads=1) as engine:
            assert engine.selection.backend == backend
            outs[backend] = engine.infer(x).copy()
    assert float(np.abs(outs["onnxruntime"] - outs["torch"]).max()) <= PARITY_TOL


def test_missing_onnx(model_dir, tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in (MODEL_JSON, WEIGHTS["ab"]):
        shutil.copy(model_dir / name, folder / name)
    with pytest.raises(InputError, match=r"cyclesr export onnx"):
        open_engine(folder, "onnxruntime")
    engine = open_engine(folder)  # auto: falls back to PyTorch and says why
    assert engine.selection.backend == "torch"
    assert "cyclesr export onnx" in dict(engine.selection.rejected)["onnxruntime-cpu"]


def test_torch_missing_simulated(model_dir, monkeypatch):
    def no_torch(module, extra, purpose):
        if module == "torch":
            raise MissingExtraError(module, extra, purpose)
        return __import__(module)

    monkeypatch.setattr(sel, "require", no_torch)
    with pytest.raises(MissingExtraError, match=r"cyclesr-deploy\[train\]"):
        open_engine(model_dir, "torch")


def test_unknown_backend(model_dir):
    with pytest.raises(InputError, match="backend must be one of auto, tensorrt"):
        open_engine(model_dir, "tflite")


@pytest.mark.parametrize("tile", [0, 96])
def test_onnxruntime_and_torch_agree_through_the_full_pipeline(model_dir, tmp_path, tile):
    """enhance_files with each CPU backend on the same float32 stack: outputs agree <= 1e-4
    (float32 output keeps the engines' difference visible; uint16 would round it away)."""
    from cyclesr_deploy import images
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.model import load_model
    from cyclesr_deploy.runtime.pipeline import EnhanceConfig, enhance_files
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    frames = np.stack([simulate_pair(SynthConfig(size=128), s).lr for s in (1, 2, 3)])
    src = images.write_tiff(tmp_path / "in" / "stack.tif", frames.astype(np.float32))
    model = load_model(model_dir)
    cfg = EnhanceConfig(tile=tile, batch=2)
    outputs = {}
    for backend in ("onnxruntime", "torch"):
        with open_engine(model_dir, backend, device="cpu") as engine:
            summary = enhance_files([src], tmp_path / backend, engine, model, cfg)
        assert summary.ok, summary.files[0].error
        outputs[backend] = images.read_tiff(summary.files[0].output).data
    assert outputs["torch"].shape == frames.shape
    scale = float(np.abs(outputs["torch"]).max())
    np.testing.assert_allclose(outputs["onnxruntime"], outputs["torch"], rtol=0, atol=1e-4 * scale)
