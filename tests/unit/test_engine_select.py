"""Backend selection, input checks and ONNX Runtime provider handling, with fakes (no GPU).

The machine is described by replacing :mod:`cyclesr_deploy.engines.select`'s probes
(``module_available``, ``cuda_device_count``, ``torch_cuda_available``); ``onnxruntime`` and
``tensorrt`` are the fakes of ``tests/fakes.py``; model folders hold placeholder files.
"""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from cyclesr_deploy import cuda_runtime
from cyclesr_deploy.engines import TensorSpec, check_batch_shape, open_engine
from cyclesr_deploy.engines import select as sel
from cyclesr_deploy.engines.onnxruntime_engine import (
    CPU_EP,
    CUDA_EP,
    TRT_EP,
    OnnxRuntimeEngine,
    resolve_providers,
)
from cyclesr_deploy.engines.trt_config import TensorRTBuildConfig
from cyclesr_deploy.errors import InputError, MissingExtraError
from cyclesr_deploy.export import tensorrt_build as tb
from cyclesr_deploy.model import (
    ENGINES_DIR,
    FROZEN_ONNX,
    ONNX_FILES,
    ONNX_FP16,
    ORT_TRT_CACHE,
    WEIGHTS,
    GeneratorConfig,
    ModelConfig,
    save_model_config,
)
from cyclesr_deploy.onnx_metadata import OnnxMetadata
from tests.fakes import (
    analytic_generator,
    fake_machine,
    install_fake_cuda,
    install_fake_ort,
    install_fake_trt,
)

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path):
    """A model folder with placeholder artifacts (ONNX files are fake-TensorRT text)."""
    folder = tmp_path / "model"
    save_model_config(folder, ModelConfig(generator=GeneratorConfig(ngf=8, n_blocks=1)))
    (folder / ONNX_FILES["ab"]).write_text("fake-onnx fp32", encoding="utf-8")
    (folder / ONNX_FP16).write_text("fake-onnx fp16", encoding="utf-8")
    (folder / WEIGHTS["ab"]).write_bytes(b"weights")
    return folder


@pytest.fixture
def machine(monkeypatch):
    """A CPU-only machine with onnxruntime (CPU) and torch; tests change the answers."""
    env = types.SimpleNamespace(
        modules={"tensorrt": False, "onnxruntime": True, "torch": True}, cuda=0, torch_cuda=False
    )
    monkeypatch.setattr(sel, "module_available", lambda name: env.modules.get(name, False))
    monkeypatch.setattr(sel, "cuda_device_count", lambda: env.cuda)
    monkeypatch.setattr(sel, "torch_cuda_available", lambda: env.torch_cuda)
    env.ort = install_fake_ort(monkeypatch, [CPU_EP])
    return env


@pytest.fixture
def gpu_machine(machine, monkeypatch):
    """One CUDA device (an RTX A4000) with TensorRT 10.13 and cuda-python (all fakes)."""
    machine.cuda = 1
    machine.modules["tensorrt"] = True
    machine.gpu = fake_machine(monkeypatch)
    install_fake_cuda(monkeypatch)
    machine.trt = install_fake_trt(monkeypatch, "10.13.0.35")
    return machine


def build_engine(model_dir, **kw):
    cfg = TensorRTBuildConfig(timing_cache_dir=None, **{"tile": 64, "batch": 2, **kw})
    return tb.engine_from_onnx(model_dir, cfg)


def labels(engine):
    return [label for label, _ in engine.selection.rejected]


# --- import hygiene ---------------------------------------------------------------------------

_BLOCKER = textwrap.dedent(
    """
    import sys, importlib.abc
    HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "cuda")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in HEAVY:
                raise ImportError('blocked for test: ' + name)
            return None
    sys.meta_path.insert(0, Block())
    """
)


def test_importing_engines_pulls_no_backend(tmp_path):
    folder = tmp_path / "m"
    save_model_config(folder, ModelConfig())
    code = _BLOCKER + textwrap.dedent(
        f"""
        import sys
        import cyclesr_deploy.engines as engines
        from cyclesr_deploy.engines import open_engine, Selection, OnnxRuntimeEngine
        from cyclesr_deploy.engines import TorchEngine, TensorRTEngine, check_batch_shape
        try:
            open_engine({str(folder)!r})
        except Exception as exc:
            print("ERROR", type(exc).__name__, exc)
        print("LOADED", sorted(m for m in sys.modules if m.split('.')[0] in
              ("torch", "onnx", "onnxruntime", "tensorrt", "cuda")))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout
    assert "ERROR InputError no backend can run" in res.stdout
    assert "onnxruntime not installed" in res.stdout and "torch not installed" in res.stdout


# --- check_batch_shape ------------------------------------------------------------------------

SPEC = TensorSpec("input", (None, 1, None, None), np.dtype(np.float32), size_multiple=4, scale=2)


@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (2, 1, 64, 96), (16, 1, 1024, 512)])
def test_check_batch_shape_accepts(shape):
    check_batch_shape(SPEC, shape)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 64, 64), r"expected \(N, C, H, W\)"),
        ((0, 1, 64, 64), "empty batch"),
        ((1, 3, 64, 64), "3 channel"),
        ((1, 1, 66, 64), "multiples of 4"),
        ((1, 1, 0, 64), "multiples of 4"),
    ],
)
def test_check_batch_shape_refuses(shape, match):
    with pytest.raises(InputError, match=match):
        check_batch_shape(SPEC, shape)


# --- auto selection ---------------------------------------------------------------------------


def test_cpu_machine_picks_onnxruntime_cpu_and_says_why(machine, model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="cyclesr_deploy.engines"):
        engine = open_engine(model_dir)
    assert isinstance(engine, OnnxRuntimeEngine)
    assert engine.selection.backend == "onnxruntime"
    assert engine.requested == [CPU_EP] and engine.precision == "fp32"
    assert dict(engine.selection.rejected) == {
        "tensorrt": "TensorRT not installed (pip install 'cyclesr-deploy[tensorrt]')",
        "onnxruntime-gpu": "onnxruntime-gpu not installed (this onnxruntime has "
        "CPUExecutionProvider; pip install 'cyclesr-deploy[gpu]' instead of [cpu])",
        "torch-cuda": "no CUDA device",
        "openvino-cpu": "openvino not installed (pip install 'cyclesr-deploy[cpu]')",
    }
    assert "not tensorrt: TensorRT not installed" in caplog.text


def test_matching_sidecar_picks_tensorrt(gpu_machine, model_dir):
    built = build_engine(model_dir)
    engine = open_engine(model_dir)
    assert engine.selection.backend == "tensorrt" and engine.selection.rejected == []
    assert engine.engine_path == built.engine_path and engine.name == "tensorrt[fp16]"
    assert "fits this GPU (NVIDIA RTX A4000 (sm 8.6)" in engine.selection.reason


def test_mismatching_sidecar_is_rejected_with_rebuild_hint(gpu_machine, model_dir, monkeypatch):
    build_engine(model_dir, tile=128)
    gpu_machine.gpu.gpu = cuda_runtime.DeviceInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30)
    install_fake_ort(monkeypatch, [TRT_EP, CUDA_EP, CPU_EP], working=[CUDA_EP, CPU_EP])
    engine = open_engine(model_dir)
    why = dict(engine.selection.rejected)["tensorrt"]
    assert "no TensorRT engine in" in why and "fits this machine" in why
    assert "GPU: engine built on NVIDIA RTX A4000 (sm 8.6)" in why
    assert f"cyclesr export tensorrt {model_dir} --tile 128 --batch 2" in why
    assert engine.selection.backend == "onnxruntime"
    assert engine.requested == [TRT_EP, CUDA_EP, CPU_EP]
    assert engine.precision == "fp16" and engine.onnx_path.name == ONNX_FP16


def test_engine_of_other_precision_only(gpu_machine, model_dir):
    build_engine(model_dir, precision="fp32")
    assert open_engine(model_dir).name == "tensorrt[fp32]"  # auto takes any precision
    with pytest.raises(InputError, match=r"no fp16 TensorRT engine .*found: fp32"):
        open_engine(model_dir, "tensorrt", precision="fp16")


def test_no_engine_built_names_the_export_command(gpu_machine, model_dir):
    engine = open_engine(model_dir)
    assert dict(engine.selection.rejected)["tensorrt"] == (
        f"no engine built for this model (run: cyclesr export tensorrt {model_dir})"
    )


def test_cuda_provider_is_used_when_a_gpu_is_present(machine, model_dir, monkeypatch):
    machine.cuda = 1
    install_fake_ort(monkeypatch, [CUDA_EP, CPU_EP], working=[CUDA_EP, CPU_EP])
    engine = open_engine(model_dir)
    assert labels(engine) == ["tensorrt"]
    assert engine.selection.reason == "ONNX Runtime with CUDAExecutionProvider (fp16)"
    assert engine.requested == [CUDA_EP, CPU_EP]


def test_gpu_onnxruntime_without_a_gpu_is_rejected(machine, model_dir, monkeypatch):
    install_fake_ort(monkeypatch, [TRT_EP, CUDA_EP, CPU_EP])
    engine = open_engine(model_dir)
    assert dict(engine.selection.rejected)["onnxruntime-gpu"] == "no CUDA device"
    assert engine.requested == [CPU_EP] and engine.precision == "fp32"


def test_torch_cuda_before_onnxruntime_cpu(machine, model_dir, monkeypatch):
    import torch

    machine.cuda, machine.torch_cuda = 1, True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine = open_engine(model_dir, channels_last=True, providers="cpu")  # ORT option ignored
    assert engine.selection.backend == "torch" and engine.name == "torch[cuda,fp16,channels_last]"
    assert labels(engine) == ["tensorrt", "onnxruntime-gpu"]


def test_torch_without_cuda_support(machine, model_dir):
    machine.cuda = 1
    engine = open_engine(model_dir)
    assert dict(engine.selection.rejected)["torch-cuda"].startswith("torch has no CUDA support")


def test_torch_cpu_when_onnxruntime_is_missing(machine, model_dir):
    machine.modules["onnxruntime"] = False
    engine = open_engine(model_dir, threads=2)
    assert engine.selection.backend == "torch" and engine.name == "torch[cpu]"
    assert engine.threads == 2
    assert dict(engine.selection.rejected)["onnxruntime-cpu"].startswith(
        "onnxruntime not installed"
    )


def test_onnxruntime_cpu_without_onnx_falls_to_torch(machine, model_dir):
    (model_dir / ONNX_FILES["ab"]).unlink()
    engine = open_engine(model_dir)
    assert engine.selection.backend == "torch"
    assert dict(engine.selection.rejected)["onnxruntime-cpu"] == (
        f"no generator.onnx in the model folder (run: cyclesr export onnx {model_dir})"
    )


def test_device_cpu_skips_gpu_candidates(gpu_machine, model_dir):
    build_engine(model_dir)
    engine = open_engine(model_dir, device="cpu")
    assert engine.selection.backend == "onnxruntime" and engine.requested == [CPU_EP]
    assert {why for _, why in engine.selection.rejected} == {
        "device='cpu' requested",
        "openvino not installed (pip install 'cyclesr-deploy[cpu]')",
    }


def test_nothing_usable_lists_every_reason(machine, model_dir):
    with pytest.raises(InputError) as info:
        open_engine(model_dir, device="cuda")
    msg = str(info.value)
    assert msg.startswith(f"no backend can run {model_dir}")
    for label in sel.AUTO_ORDER:
        assert f"  - {label}: " in msg
    assert "device='cuda' requested" in msg


def test_selection_describe():
    s = sel.Selection("onnxruntime", "why", [("tensorrt", "no engine")])
    assert str(s) == "onnxruntime: why\n  not tensorrt: no engine"


# --- explicit backends and errors -------------------------------------------------------------


def test_explicit_backends(machine, model_dir):
    ort_engine = open_engine(model_dir, "onnxruntime", precision="fp16", threads=1)
    assert ort_engine.onnx_path.name == ONNX_FP16 and ort_engine.threads == 1
    assert ort_engine.selection.reason.startswith("requested (backend='onnxruntime')")
    torch_engine = open_engine(model_dir, "torch", compile=True)
    assert torch_engine.name == "torch[cpu,compiled]" and torch_engine.compile_mode == "default"


def test_unknown_backend_precision_device_or_option(machine, model_dir):
    with pytest.raises(InputError, match="backend must be one of"):
        open_engine(model_dir, "openvino-gpu")
    with pytest.raises(InputError, match="precision must be"):
        open_engine(model_dir, precision="int4")
    with pytest.raises(InputError, match="device must be"):
        open_engine(model_dir, device="gpu")
    with pytest.raises(TypeError, match="unexpected option"):
        open_engine(model_dir, tile=512)
    with pytest.raises(TypeError):  # a torch option given to ONNX Runtime explicitly
        open_engine(model_dir, "onnxruntime", channels_last=True)


def test_not_a_model_folder(machine, tmp_path):
    with pytest.raises(InputError, match=r"model\.json"):
        open_engine(tmp_path)


@pytest.mark.parametrize(
    ("backend", "device", "module", "extra"),
    [
        ("tensorrt", "auto", "tensorrt", "tensorrt"),
        ("onnxruntime", "auto", "onnxruntime", "cpu"),
        ("onnxruntime", "cuda", "onnxruntime", "gpu"),
        ("torch", "auto", "torch", "train"),
    ],
)
def test_missing_backend_names_the_extra(
    machine, model_dir, monkeypatch, backend, device, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf"cyclesr-deploy\[{extra}\]"):
        open_engine(model_dir, backend, device=device)


def test_onnxruntime_cpu_build_asked_for_cuda(machine, model_dir):
    with pytest.raises(MissingExtraError, match=r"cyclesr-deploy\[gpu\]"):
        open_engine(model_dir, "onnxruntime", device="cuda")


def test_missing_onnx_says_to_export(machine, model_dir):
    (model_dir / ONNX_FILES["ab"]).unlink()
    with pytest.raises(InputError, match=r"cyclesr export onnx"):
        open_engine(model_dir, "onnxruntime")


def test_tensorrt_on_cpu_is_a_contradiction(machine, model_dir):
    with pytest.raises(InputError, match="runs on a CUDA GPU"):
        open_engine(model_dir, "tensorrt", device="cpu")


def test_torch_without_weights(machine, model_dir):
    (model_dir / WEIGHTS["ab"]).unlink()
    with pytest.raises(InputError, match=r"generator_ab\.pt"):
        open_engine(model_dir, "torch")


# --- CUDA device probe ------------------------------------------------------------------------


def test_cuda_device_count_uses_the_driver_library(monkeypatch):
    class Driver:
        def cuInit(self, flags):
            return 0

        def cuDeviceGetCount(self, ref):
            ctypes.cast(ref, ctypes.POINTER(ctypes.c_int)).contents.value = 2
            return 0

    sel.cuda_device_count.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver())
    try:
        assert sel.cuda_device_count() == 2
    finally:
        sel.cuda_device_count.cache_clear()


def test_cuda_device_count_without_driver(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    sel.cuda_device_count.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", missing)
    try:
        assert sel.cuda_device_count() == 0
    finally:
        sel.cuda_device_count.cache_clear()


# --- ONNX Runtime providers (fake session) ----------------------------------------------------


def test_resolve_providers():
    gpu = [TRT_EP, CUDA_EP, CPU_EP]
    assert resolve_providers("auto", gpu) == gpu
    assert resolve_providers("auto", [CPU_EP, "AzureExecutionProvider"]) == [CPU_EP]
    assert resolve_providers("cpu", gpu) == [CPU_EP]
    assert resolve_providers("cuda", [CUDA_EP, CPU_EP]) == [CUDA_EP, CPU_EP]
    assert resolve_providers([CUDA_EP], gpu) == [CUDA_EP, CPU_EP]
    with pytest.raises(MissingExtraError, match=r"\[gpu\]"):
        resolve_providers("cuda", [CPU_EP])
    with pytest.raises(InputError, match="not available in this onnxruntime"):
        resolve_providers([CUDA_EP], [CPU_EP])
    with pytest.raises(InputError, match="providers"):
        resolve_providers("rocm", gpu)


def test_tensorrt_ep_options(model_dir, monkeypatch):
    ort = install_fake_ort(monkeypatch, [TRT_EP, CUDA_EP, CPU_EP], working=[TRT_EP, CPU_EP])
    engine = OnnxRuntimeEngine(
        model_dir,
        precision="fp16",
        device_id=1,
        threads=3,
        options={TRT_EP: {"trt_builder_optimization_level": 5}},
    )
    with engine:
        assert engine.name == "onnxruntime[TensorrtExecutionProvider,fp16]"
    session = ort.state.sessions[-1]
    (trt_name, trt_opts), (cuda_name, cuda_opts), (cpu_name, _) = session.requested
    assert (trt_name, cuda_name, cpu_name) == (TRT_EP, CUDA_EP, CPU_EP)
    cache = model_dir / ENGINES_DIR / ORT_TRT_CACHE
    assert trt_opts["trt_engine_cache_enable"] is True
    assert trt_opts["trt_engine_cache_path"] == str(cache) and cache.is_dir()
    assert trt_opts["trt_fp16_enable"] is True and trt_opts["trt_timing_cache_enable"] is True
    assert trt_opts["trt_timing_cache_path"].endswith("onnxruntime")
    assert trt_opts["trt_builder_optimization_level"] == 5 and trt_opts["device_id"] == 1
    assert cuda_opts == {"device_id": 1}
    assert session.options.intra_op_num_threads == 3


def test_gpu_provider_fallback_is_reported(model_dir, monkeypatch, caplog):
    install_fake_ort(monkeypatch, [TRT_EP, CUDA_EP, CPU_EP])  # listed, but none starts
    engine = OnnxRuntimeEngine(model_dir, providers="cuda")
    assert engine.name == "onnxruntime[TensorrtExecutionProvider]"  # requested, before open
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.engines"), engine:
        assert engine.name == "onnxruntime[CPUExecutionProvider]"
        assert engine.providers == [CPU_EP]
        assert engine._bindings is None  # plain run() on the CPU
    assert "runs on CPUExecutionProvider" in caplog.text
    assert "TensorrtExecutionProvider, CUDAExecutionProvider unavailable" in caplog.text


def test_trt_ep_falling_back_to_cuda_is_reported(model_dir, monkeypatch, caplog):
    install_fake_ort(monkeypatch, [TRT_EP, CUDA_EP, CPU_EP], working=[CUDA_EP, CPU_EP])
    warnings = caplog.at_level(logging.WARNING, logger="cyclesr_deploy.engines")
    with warnings, OnnxRuntimeEngine(model_dir) as engine:
        assert engine.name == "onnxruntime[CUDAExecutionProvider]"
    assert "TensorrtExecutionProvider unavailable" in caplog.text


def test_session_raising_on_gpu_is_retried_on_cpu(model_dir, monkeypatch, caplog):
    ort = install_fake_ort(monkeypatch, [CUDA_EP, CPU_EP])
    ort.state.raise_on_gpu = True
    warnings = caplog.at_level(logging.WARNING, logger="cyclesr_deploy.engines")
    with warnings, OnnxRuntimeEngine(model_dir, providers="cuda") as engine:
        assert engine.name == "onnxruntime[CPUExecutionProvider]"
    assert "could not start CUDAExecutionProvider" in caplog.text
    assert ort.state.sessions[-1].requested == [CPU_EP]


def test_cuda_io_binding_reuses_device_input_and_host_output(model_dir, monkeypatch):
    ort = install_fake_ort(monkeypatch, [CUDA_EP, CPU_EP], working=[CUDA_EP, CPU_EP])
    with OnnxRuntimeEngine(model_dir, device_id=0) as engine:
        assert engine._bindings is not None
        x1 = np.full((2, 1, 8, 12), 0.5, np.float32)
        y1 = engine.infer(x1)
        np.testing.assert_array_equal(y1, analytic_generator(x1, 1))
        y2 = engine.infer(np.zeros_like(x1))
        assert y2 is y1 and np.all(y1 == 1)  # same host array per shape, overwritten
        y3 = engine.infer(np.zeros((1, 1, 8, 8), np.float32))
        assert y3.shape == (1, 1, 8, 8) and y3 is not y1
    assert ort.state.ortvalues == [((2, 1, 8, 12), "cuda", 0), ((1, 1, 8, 8), "cuda", 0)]
    assert ort.state.updates == 3 and ort.state.syncs == 3 and ort.state.runs == 3
    assert engine.session is None and engine._bindings is None


def test_embedded_metadata_must_match_the_folder(model_dir, monkeypatch):
    ort = install_fake_ort(monkeypatch, [CPU_EP])
    other = ModelConfig(generator=GeneratorConfig(ngf=8, n_blocks=1, scale=2))
    ort.state.metadata = OnnxMetadata(model=other, export={}).to_props()
    with pytest.raises(InputError, match="another generator"):
        OnnxRuntimeEngine(model_dir).__enter__()
    same = ModelConfig(generator=GeneratorConfig(ngf=8, n_blocks=1))
    ort.state.metadata = OnnxMetadata(model=same, export={}, precision="fp16").to_props()
    with pytest.raises(InputError, match="fp16 ONNX, but precision='fp32'"):
        OnnxRuntimeEngine(model_dir).__enter__()


def test_onnxruntime_engine_argument_errors(model_dir, monkeypatch):
    install_fake_ort(monkeypatch, [CPU_EP])
    with pytest.raises(InputError, match="no such ONNX file or model folder"):
        OnnxRuntimeEngine(model_dir / "missing.onnx")
    with pytest.raises(InputError, match="precision"):
        OnnxRuntimeEngine(model_dir, precision="int8")
    with pytest.raises(InputError, match="threads"):
        OnnxRuntimeEngine(model_dir, threads=0)
    engine = OnnxRuntimeEngine(model_dir)
    with pytest.raises(RuntimeError, match="closed"):
        engine.infer(np.zeros((1, 1, 8, 8), np.float32))


# --- the frozen-statistics choice (open_engine(..., tiling=...)) ------------------------------


@pytest.fixture
def frozen_dir(model_dir):
    """``model_dir`` with the two frozen-statistics graphs (placeholders)."""
    for name in FROZEN_ONNX.values():
        (model_dir / name).write_text("fake-onnx fp32 frozen", encoding="utf-8")
    return model_dir


@pytest.fixture
def never_opened(monkeypatch):
    """The policy probes: no engine may be opened while choosing."""
    from cyclesr_deploy.engines.frozen import OnnxFrozenEngine

    def refuse(self):
        raise AssertionError(f"{type(self).__name__} opened while choosing")

    monkeypatch.setattr(OnnxRuntimeEngine, "open", refuse)
    monkeypatch.setattr(OnnxFrozenEngine, "open", refuse)


def test_untiled_and_naive_runs_get_the_plain_engine(machine, frozen_dir, never_opened):
    plain = open_engine(frozen_dir)
    assert isinstance(plain, OnnxRuntimeEngine) and plain.selection.frozen == ""
    naive = open_engine(frozen_dir, tiling="naive")
    assert isinstance(naive, OnnxRuntimeEngine)
    assert "naive" in naive.selection.frozen and not naive.selection.warnings


def test_tiled_cpu_run_gets_the_onnx_frozen_engine(machine, frozen_dir, never_opened):
    from cyclesr_deploy.engines import FrozenStatsEngine
    from cyclesr_deploy.engines.frozen import OnnxFrozenEngine

    calls = []
    engine = open_engine(frozen_dir, tiling="auto", stats="whole", frames=lambda: calls.append(1))
    assert isinstance(engine, OnnxFrozenEngine) and isinstance(engine, FrozenStatsEngine)
    assert engine.stats == "whole"
    assert engine.selection.backend == "onnxruntime"
    assert "frozen" in engine.selection.frozen
    assert ("tensorrt-frozen", "TensorRT not installed") in engine.selection.rejected
    assert calls == []  # frame shapes are read only when a TensorRT engine is considered


def test_a_gpu_engine_beats_cpu_frozen_statistics(machine, frozen_dir, never_opened, monkeypatch):
    machine.cuda = 1
    install_fake_ort(monkeypatch, [CUDA_EP, CPU_EP])
    engine = open_engine(frozen_dir, tiling="auto")
    assert isinstance(engine, OnnxRuntimeEngine) and "CUDAExecutionProvider" in engine.requested
    assert "GPU engine" in engine.selection.frozen
    # an explicit ONNX Runtime backend keeps the CPU frozen engine (as before)
    explicit = open_engine(frozen_dir, "onnxruntime", tiling="auto")
    assert "frozen" in explicit.name


def test_missing_graphs_fall_back_with_a_warning_only_when_asked_for(
    machine, model_dir, never_opened
):
    auto = open_engine(model_dir, tiling="auto")
    assert isinstance(auto, OnnxRuntimeEngine) and not auto.selection.warnings
    assert "onnxruntime-frozen" in labels(auto)
    explicit = open_engine(model_dir, "onnxruntime", tiling="auto")
    (warning,) = explicit.selection.warnings
    assert f"cyclesr export onnx {model_dir} --overwrite" in warning


def test_no_instance_norm_never_freezes(machine, tmp_path, never_opened):
    folder = tmp_path / "plain"
    save_model_config(
        folder, ModelConfig(generator=GeneratorConfig(ngf=8, n_blocks=1, norm="none"))
    )
    (folder / ONNX_FILES["ab"]).write_text("fake-onnx fp32", encoding="utf-8")
    for name in FROZEN_ONNX.values():
        (folder / name).write_text("fake-onnx fp32 frozen", encoding="utf-8")
    for tiling in ("auto", "frozen"):
        engine = open_engine(folder, tiling=tiling)
        assert isinstance(engine, OnnxRuntimeEngine)
        assert "InstanceNorm" in engine.selection.frozen


def test_tiling_frozen_requires_a_frozen_engine(machine, frozen_dir, never_opened):
    from cyclesr_deploy.engines.frozen import OnnxFrozenEngine

    assert isinstance(open_engine(frozen_dir, tiling="frozen"), OnnxFrozenEngine)
    (frozen_dir / FROZEN_ONNX["tile"]).unlink()
    with pytest.raises(InputError, match=FROZEN_ONNX["tile"].split(".")[1]):
        open_engine(frozen_dir, "onnxruntime", tiling="frozen")
    with pytest.raises(InputError, match="tiling must be one of"):
        open_engine(frozen_dir, tiling="tiles")


def test_tensorrt_frozen_engines_need_known_frame_sizes(frozen_dir, monkeypatch):
    """watch and Enhancer do not know their frame sizes up front: TensorRT's statistics engines
    (fixed sizes) are not taken for them under auto, so every door gets the same engine."""
    import cyclesr_deploy.engines.frozen as frozen_mod
    from cyclesr_deploy.engines.frozen_policy import UNKNOWN_FRAMES, choose_frozen
    from cyclesr_deploy.model import load_model

    opened = []

    def fake_open(model_dir, backend, **kwargs):
        opened.append((backend, kwargs.get("frames")))
        return types.SimpleNamespace(selection=f"fake {backend} frozen")

    monkeypatch.setattr(frozen_mod, "open_frozen_engine", fake_open)
    common = dict(
        backend="auto", precision="auto", tiling="auto", stats="auto", threads=None,
        gpu_plan=lambda: True, tensorrt_installed=lambda: True, no_cuda=lambda: None,
    )  # fmt: skip
    model = load_model(frozen_dir)
    unknown = choose_frozen(frozen_dir, model, frames=(), **common)
    assert unknown.engine is None and ("tensorrt-frozen", UNKNOWN_FRAMES) in unknown.rejected
    assert opened == []
    known = choose_frozen(frozen_dir, model, frames=[(1024, 1024)], **common)
    assert known.engine is not None and opened == [("tensorrt", [(1024, 1024)])]
