"""Choose and create the engine for a model folder: :func:`open_engine`.

``backend="auto"`` tries, in this order (deploy notes §7), and takes the first that is usable:

1. ``tensorrt``: a TensorRT engine in ``MODEL_DIR/engines`` whose sidecar fits this GPU,
   TensorRT version and OS (built with ``cyclesr export tensorrt``);
2. ``onnxruntime-gpu``: ONNX Runtime with the TensorRT or CUDA execution provider;
3. ``torch-cuda``: PyTorch on the GPU with the folder's weights;
4. ``openvino-cpu``: OpenVINO on the CPU (``generator.onnx``; 1.5x ONNX Runtime's speed on the
   benchmark machine, see benchmarks/results/cpu_engines.md);
5. ``onnxruntime-cpu``: ONNX Runtime on the CPU;
6. ``torch-cpu``: PyTorch on the CPU.

The engine carries a :class:`Selection` (``engine.selection``): the backend, why it was chosen
and why each earlier candidate was not; it is also logged at INFO. Probing imports nothing
heavy on a machine without a GPU: CUDA devices are counted through the driver library
(``cuInit`` + ``cuDeviceGetCount`` via ctypes), so torch is only imported when a GPU exists
or when the torch backend is chosen.

The ONNX Runtime TensorRT EP (step 2) builds its own engine the first time it sees a new
range of input shapes (minutes; cached in ``MODEL_DIR/engines/onnxruntime-trt``): build a
cyclesr engine instead (step 1), or pass ``providers=["CUDAExecutionProvider"]``, or fixed
profiles through ``options={"TensorrtExecutionProvider": {"trt_profile_min_shapes": ...}}``.
Which provider a session really uses is only known once it is open: see ``engine.name``.

Tiled runs of InstanceNorm generators: ``open_engine(..., tiling="auto"|"frozen")`` returns the
frozen-statistics engine the run needs where the policy of
:mod:`cyclesr_deploy.engines.frozen_policy` says so (decided by probing, nothing opened), and
``selection.frozen`` says why or why not. Every artifact an engine opens is checked against
``export.json`` first (:meth:`cyclesr_deploy.model.ModelFolder.verify`).

``precision="default"``: FP16 where the engine runs on a GPU (TensorRT: an fp16 engine before an
fp32 one; ONNX Runtime: ``generator.fp16.onnx`` when exported; PyTorch: FP16 with FP32
InstanceNorm), FP32 on the CPU (the same output as ONNX Runtime FP32 within a few levels).
``precision="auto"``: the same on a GPU; on the CPU with OpenVINO the fastest reduced precision
(``int8``, ``bf16``) whose recorded quality loss passes the gate of
:mod:`cyclesr_deploy.engines.precision`, else FP32 (the choice and the rejected precisions are in
``selection``); FP32 on other CPU engines. Reduced precision on the CPU is opt-in: its output
differs from FP32's by more than rounding (bf16: mean ~21 of 38296 levels on the built-in model).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import inspect
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cyclesr_deploy.engines.base import Engine
from cyclesr_deploy.engines.frozen_policy import FrameShapes, choose_frozen
from cyclesr_deploy.engines.tensorrt_load import find_engine, generator_engines
from cyclesr_deploy.errors import InputError, MissingExtraError, require
from cyclesr_deploy.model import ONNX_BY_PRECISION, WEIGHTS, ModelFolder, load_model

log = logging.getLogger("cyclesr_deploy.engines")

Backend = Literal["auto", "tensorrt", "onnxruntime", "openvino", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")
PRECISIONS: tuple[str, ...] = ("default", "auto", "fp32", "fp16", "bf16", "int8")
CPU_ONLY_PRECISIONS: tuple[str, ...] = ("bf16", "int8")  # the OpenVINO engine's
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: The auto order, as candidate labels (backend-device).
AUTO_ORDER: tuple[str, ...] = (
    "tensorrt",
    "onnxruntime-gpu",
    "torch-cuda",
    "openvino-cpu",
    "onnxruntime-cpu",
    "torch-cpu",
)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
GPU_LABELS = AUTO_ORDER[:3]  # the candidates that run on a GPU


@dataclass(frozen=True)
class Selection:
    """Why this engine: ``backend`` (``tensorrt``/``onnxruntime``/``torch``), ``reason`` (one
    line), ``rejected``: (candidate, why not) for each candidate tried before it (frozen-
    statistics candidates ``tensorrt-frozen``/``onnxruntime-frozen`` included); ``frozen``:
    for a tiled run, why the engine does or does not freeze InstanceNorm statistics;
    ``warnings``: what the user should hear (a requested frozen engine that is not usable)."""

    backend: str
    reason: str
    rejected: list[tuple[str, str]] = field(default_factory=list)
    frozen: str = ""
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """Several lines: the choice, then one line per rejected candidate."""
        lines = [f"{self.backend}: {self.reason}"]
        lines += [f"  frozen statistics: {self.frozen}"] if self.frozen else []
        lines += [f"  not {label}: {why}" for label, why in self.rejected]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


# --- probes (module-level so tests can replace them) ------------------------------------------


def module_available(name: str) -> bool:
    """True when ``name`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices the NVIDIA driver reports (honours CUDA_VISIBLE_DEVICES); 0 without a
    driver or device. Uses the driver library directly (``cuInit``, ``cuDeviceGetCount``), so
    no Python package is needed and nothing heavy is imported."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except (AttributeError, OSError):
            return 0
    return 0


def ort_available_providers() -> list[str]:
    """``onnxruntime.get_available_providers()`` (imports onnxruntime)."""
    return list(importlib.import_module("onnxruntime").get_available_providers())


def openvino_capabilities() -> tuple[str, ...]:
    """OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (imports openvino)."""
    from cyclesr_deploy.engines.openvino_engine import capabilities

    return capabilities("CPU")


def torch_cuda_available() -> bool:
    """``torch.cuda.is_available()`` (imports torch)."""
    return bool(importlib.import_module("torch").cuda.is_available())


# --- open_engine ------------------------------------------------------------------------------


class _Probe:
    """Answers about this machine, each computed once per :func:`open_engine` call."""

    def __init__(self, model_dir: Path, device_id: int, cpu_gate: bool = True) -> None:
        self.model_dir = model_dir
        self.device_id = device_id
        self.cpu_gate = cpu_gate  # precision "auto" (gated reduced precision), not "default"

    @functools.cached_property
    def cuda_devices(self) -> int:
        return cuda_device_count()

    def no_cuda(self) -> str | None:
        """Why the CUDA device is unusable, or None."""
        if self.cuda_devices == 0:
            return "no CUDA device"
        if self.device_id >= self.cuda_devices:
            return f"no CUDA device {self.device_id} (found {self.cuda_devices})"
        return None

    @functools.cached_property
    def ort_providers(self) -> list[str] | None:
        return ort_available_providers() if module_available("onnxruntime") else None

    def onnx_missing(self, precision: str) -> str | None:
        name = ONNX_BY_PRECISION[precision]
        if not (self.model_dir / name).is_file():
            return f"no {name} in the model folder (run: cyclesr export onnx {self.model_dir})"
        return None

    def ort_gpu_unusable(self) -> str | None:
        """Why ONNX Runtime cannot use a GPU here, or None."""
        providers = self.ort_providers
        if providers is None:
            return "onnxruntime not installed (pip install 'cyclesr-deploy[gpu]')"
        if not any(p in providers for p in GPU_PROVIDERS):
            return (
                "onnxruntime-gpu not installed (this onnxruntime has "
                f"{', '.join(providers)}; pip install 'cyclesr-deploy[gpu]' instead of [cpu])"
            )
        return self.no_cuda()

    @functools.cached_property
    def ov_capabilities(self) -> tuple[str, ...]:
        return openvino_capabilities()

    def openvino_precision(self, precision: str) -> tuple[str | None, str, list[tuple[str, str]]]:
        """(precision, how chosen, rejected precisions) for OpenVINO on the CPU; precision None
        when the requested one cannot run here (the reason instead)."""
        from cyclesr_deploy.engines.precision import choose_precision, cpu_cannot_run

        if precision == "auto" and not self.cpu_gate:
            return "fp32", "fp32 (the default; --precision auto: a gated reduced precision)", []
        if precision == "auto":
            choice = choose_precision(self.model_dir, self.ov_capabilities)
            return choice.precision, choice.reason, choice.rejected
        if precision == "fp16":
            return None, "fp16 runs on a GPU (OpenVINO CPU: fp32, bf16, int8)", []
        why = cpu_cannot_run(precision, self.ov_capabilities)
        if why is None and precision == "int8" and self.onnx_missing_cpu(precision):
            why = self.onnx_missing_cpu(precision)
        return (None, why, []) if why else (precision, f"requested ({precision})", [])

    def onnx_missing_cpu(self, precision: str) -> str | None:
        from cyclesr_deploy.engines.precision import ONNX_BY_CPU_PRECISION

        name = ONNX_BY_CPU_PRECISION[precision]
        if not (self.model_dir / name).is_file():
            hint = ModelFolder(self.model_dir).reexport_command(name)
            return f"no {name} in the model folder (run: {hint})"
        return None

    def weights_missing(self) -> str | None:
        if not (self.model_dir / WEIGHTS["ab"]).is_file():
            return f"no {WEIGHTS['ab']} in the model folder (an export-only folder)"
        return None

    def torch_cuda_unusable(self) -> str | None:
        if not module_available("torch"):
            return "torch not installed (pip install 'cyclesr-deploy[train]')"
        why = self.no_cuda() or self.weights_missing()
        if why:
            return why
        if not torch_cuda_available():
            return "torch has no CUDA support here (CPU build of torch, or driver too old)"
        return None


def _ort_precision(precision: str, on_gpu: bool, probe: _Probe) -> str:
    if precision in CPU_ONLY_PRECISIONS:
        raise InputError(f"precision {precision!r} is OpenVINO's (use --backend openvino or auto)")
    if precision != "auto":
        return precision
    if on_gpu and probe.onnx_missing("fp16") is None:
        return "fp16"
    return "fp32"


def _accepted(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _engine_classes() -> dict[str, type]:
    from cyclesr_deploy.engines.onnxruntime_engine import OnnxRuntimeEngine
    from cyclesr_deploy.engines.openvino_engine import OpenVINOEngine
    from cyclesr_deploy.engines.tensorrt_engine import TensorRTEngine
    from cyclesr_deploy.engines.torch_engine import TorchEngine

    return {
        "tensorrt": TensorRTEngine,
        "onnxruntime": OnnxRuntimeEngine,
        "openvino": OpenVINOEngine,
        "torch": TorchEngine,
    }


def open_engine(
    model_dir: str | Path,
    backend: Backend = "auto",
    *,
    precision: Literal["default", "auto", "fp32", "fp16", "bf16", "int8"] = "default",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    device_id: int = 0,
    threads: int | None = None,
    tiling: Literal["none", "auto", "frozen", "naive"] = "none",
    stats: Literal["auto", "whole", "crops"] = "auto",
    frames: FrameShapes = (),
    **options: Any,
) -> Engine:
    """The engine for ``model_dir``, not yet opened: use it as ``with open_engine(d) as e``.

    Args:
        model_dir: a model folder (``model.json`` plus exported artifacts and/or weights).
        backend: ``"auto"`` (see the module docstring for the order), ``"tensorrt"``,
            ``"onnxruntime"``, ``"openvino"`` or ``"torch"``.
        precision: ``"default"`` (FP16 on a GPU, FP32 on the CPU), ``"auto"`` (FP16 on a GPU;
            OpenVINO: the gated choice of
            :func:`~cyclesr_deploy.engines.precision.choose_precision`; else FP32),
            ``"fp32"``, ``"fp16"``, or OpenVINO's ``"bf16"`` (refused on CPUs without
            avx512_bf16/AMX) and ``"int8"`` (``generator.int8.onnx``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``: restricts the candidates.
        device_id: CUDA device index.
        threads: CPU threads (ONNX Runtime intra-op threads; ``torch.set_num_threads``).
        options: backend-specific keyword arguments (``OnnxRuntimeEngine``: ``providers``,
            ``io_binding``, ``options``; ``TorchEngine``: ``channels_last``, ``compile``;
            ``TensorRTEngine``: ``check``). With ``"auto"``, those the chosen engine does not
            take are ignored; a name no engine takes is a TypeError.
        tiling: the run's tiling mode (``EnhanceConfig.tiling_mode``) for a tiled run;
            ``"none"`` (default; pass it for untiled runs, tile 0 with tiling auto) gives the
            plain engine. ``"frozen"`` gives a frozen-statistics engine
            (:class:`~cyclesr_deploy.engines.base.FrozenStatsEngine`) or an error;
            ``"auto"`` one where the policy of :mod:`cyclesr_deploy.engines.frozen_policy`
            says so (probed, nothing opened); ``"naive"`` the plain engine.
        stats: the frozen engines' statistics estimate (``EnhanceConfig.stats``).
        frames: the (H, W) sizes of the frames to come, or a function giving them (called
            only if a TensorRT statistics engine is considered: it must hold them all).

    The returned engine has ``selection``: a :class:`Selection`. Errors: InputError (bad
    folder, unknown backend, missing artifact: the message names the export command),
    MissingExtraError (the backend's package is not installed: it names the extra),
    EngineMismatchError (``"tensorrt"``: no engine fits this GPU).
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    model_dir = Path(model_dir)
    model = load_model(model_dir)  # a clear error for a folder that is not a model
    known = set().union(*(_accepted(c) for c in _engine_classes().values()))
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"open_engine() got unexpected option(s): {', '.join(unknown)}")
    probe = _Probe(model_dir, device_id, cpu_gate=precision == "auto")
    precision = "auto" if precision == "default" else precision  # the same on GPUs
    common = {"device_id": device_id, "threads": threads}
    plans: list[_Plan] = []

    def plan() -> _Plan:
        if not plans:
            plans.append(_plan_auto(probe, precision, device, common))
        return plans[0]

    frozen = choose_frozen(
        model_dir,
        model,
        backend=backend,
        precision=precision,
        tiling=tiling,
        stats=stats,
        frames=frames,
        threads=threads,
        gpu_plan=lambda: plan().on_gpu,
        tensorrt_installed=lambda: module_available("tensorrt"),
        openvino_installed=lambda: module_available("openvino"),
        no_cuda=probe.no_cuda,
        whole_precision=lambda: probe.openvino_precision(precision),
    )
    for warning in frozen.warnings:  # before the plain engine, which may fail
        log.warning("frozen statistics: %s", warning)
    if frozen.engine is not None:
        engine = frozen.engine
        backend_name = str(engine.name).split("[")[0]
        selection = Selection(
            backend_name, frozen.reason, frozen.rejected, frozen.reason, frozen.warnings
        )
    else:
        if backend == "auto":
            engine = _create(plan().backend, plan().args, options, strict=False)
            selection = plan().selection
        else:
            engine = _explicit(backend, probe, precision, device, common, options)
            how, refused = getattr(engine, "precision_choice", ("", []))
            reason = f"requested (backend={backend!r}): {engine.name}" + (f"; {how}" if how else "")
            selection = Selection(backend, reason, list(refused))
        if tiling != "none":
            selection = replace(
                selection,
                rejected=[*frozen.rejected, *selection.rejected],
                frozen=frozen.reason,
                warnings=frozen.warnings,
            )
    engine.selection = selection
    engine.model_folder = model_dir  # the frame runner reads its trust calibration
    log.info("engine for %s: %s", model_dir, selection.describe())
    return engine


@dataclass(frozen=True)
class _Plan:
    """The auto order's choice before anything is created: its candidate ``label`` (one of
    :data:`AUTO_ORDER`), the engine's constructor ``args``, why, and the candidates before."""

    label: str
    args: dict[str, Any]
    reason: str
    rejected: list[tuple[str, str]]

    @property
    def backend(self) -> str:
        return self.label.split("-")[0]

    @property
    def on_gpu(self) -> bool:
        return self.label in GPU_LABELS

    @property
    def selection(self) -> Selection:
        return Selection(self.backend, self.reason, self.rejected)


def _create(backend: str, args: dict[str, Any], options: dict[str, Any], strict: bool) -> Any:
    """Instantiate the backend's engine class; ``strict=False`` drops options it does not
    take (auto mode), ``strict=True`` lets its constructor refuse them."""
    cls = _engine_classes()[backend]
    accepted = _accepted(cls)
    args = dict(args)
    path = args.pop("path")
    kwargs = {k: v for k, v in {**args, **options}.items() if k in accepted or strict}
    return cls(path, **kwargs)


def _explicit(
    backend: str,
    probe: _Probe,
    precision: str,
    device: str,
    common: dict[str, Any],
    options: dict[str, Any],
) -> Any:
    model_dir = probe.model_dir
    if backend == "tensorrt":
        if device == "cpu":
            raise InputError("backend 'tensorrt' runs on a CUDA GPU; device='cpu' contradicts it")
        require("tensorrt", "tensorrt", "The TensorRT backend")
        args = {"path": model_dir, "device_id": common["device_id"]}
        args["precision"] = None if precision == "auto" else precision
        return _create("tensorrt", args, options, strict=True)
    if backend == "onnxruntime":
        extra = "gpu" if device == "cuda" else "cpu"
        require("onnxruntime", extra, "The ONNX Runtime backend")
        on_gpu = device == "cuda" or (device == "auto" and probe.ort_gpu_unusable() is None)
        prec = _ort_precision(precision, on_gpu, probe)
        if probe.onnx_missing(prec):
            raise InputError(
                f"{model_dir / ONNX_BY_PRECISION[prec]}: ONNX not found; export it first "
                f"(cyclesr export onnx {model_dir})"
            )
        providers = options.pop("providers", device if device != "auto" else "auto")
        args = {"path": model_dir, "precision": prec, "providers": providers, **common}
        return _create("onnxruntime", args, options, strict=True)
    if backend == "openvino":
        from cyclesr_deploy.engines.openvino_engine import import_openvino

        import_openvino()
        if device == "cuda":
            raise InputError(
                "backend 'openvino' runs on the CPU (or an Intel GPU: "
                "OpenVINOEngine(model_dir, device='GPU')); device='cuda' contradicts it"
            )
        ov_device = "CPU"
        prec, how, rejected = probe.openvino_precision(precision)
        if prec is None:
            raise InputError(f"backend 'openvino', precision {precision!r}: {how}")
        args = {"path": model_dir, "precision": prec, "device": ov_device, **common}
        args.pop("device_id")
        engine = _create("openvino", args, options, strict=True)
        engine.precision_choice = (how, [(f"openvino-{p}", w) for p, w in rejected])
        return engine
    if precision in CPU_ONLY_PRECISIONS:
        raise InputError(f"precision {precision!r} is OpenVINO's (use --backend openvino or auto)")
    require("torch", "train", "The PyTorch backend")
    torch_device = device
    if precision == "auto":
        if device == "auto":
            torch_device = "cuda" if probe.torch_cuda_unusable() is None else "cpu"
        prec = "fp16" if torch_device == "cuda" else "fp32"
    else:
        prec = precision
    args = {"path": model_dir, "device": torch_device, "precision": prec, **common}
    return _create("torch", args, options, strict=True)


def _plan_auto(probe: _Probe, precision: str, device: str, common: dict[str, Any]) -> _Plan:
    """The first usable candidate of the auto order (probed, nothing created)."""
    model_dir = probe.model_dir
    rejected: list[tuple[str, str]] = []
    gpu_ok = device in ("auto", "cuda")
    cpu_ok = device in ("auto", "cpu")

    # 1. a TensorRT engine built for this machine
    why = (None if gpu_ok else "device='cpu' requested") or _cpu_only(precision)
    if why is None and not module_available("tensorrt"):
        why = "TensorRT not installed (pip install 'cyclesr-deploy[tensorrt]')"
    why = why or probe.no_cuda()
    if why is None and not generator_engines(model_dir):
        why = f"no engine built for this model (run: cyclesr export tensorrt {model_dir})"
    if why is None:
        try:
            choice = find_engine(model_dir, precision=precision, device_id=common["device_id"])
        except (InputError, MissingExtraError, RuntimeError) as exc:
            why = _one_line(exc)
        else:
            args = {"path": choice.engine_path, "device_id": common["device_id"]}
            reason = f"{choice.engine_path.name} fits this GPU ({choice.sidecar.describe()})"
            return _Plan("tensorrt", args, reason, rejected)
    rejected.append(("tensorrt", why))

    # 2. ONNX Runtime on the GPU (TensorRT EP, CUDA EP)
    why = (None if gpu_ok else "device='cpu' requested") or _cpu_only(precision)
    why = why or probe.ort_gpu_unusable()
    prec = "fp32" if why else _ort_precision(precision, True, probe)
    why = why or probe.onnx_missing(prec)
    if why is None:
        assert probe.ort_providers is not None
        gpu = [p for p in GPU_PROVIDERS if p in probe.ort_providers]
        args = {"path": model_dir, "precision": prec, "providers": "cuda", **common}
        reason = f"ONNX Runtime with {' > '.join(gpu)} ({prec})"
        return _Plan("onnxruntime-gpu", args, reason, rejected)
    rejected.append(("onnxruntime-gpu", why))

    # 3. PyTorch on the GPU
    why = (None if gpu_ok else "device='cpu' requested") or _cpu_only(precision)
    why = why or probe.torch_cuda_unusable()
    if why is None:
        prec = "fp16" if precision == "auto" else precision
        args = {"path": model_dir, "device": "cuda", "precision": prec, **common}
        return _Plan("torch-cuda", args, f"PyTorch on CUDA ({prec})", rejected)
    rejected.append(("torch-cuda", why))

    # 4. OpenVINO on the CPU (precision auto: the gate of engines/precision.py)
    why = None if cpu_ok else "device='cuda' requested"
    if why is None and not module_available("openvino"):
        why = "openvino not installed (pip install 'cyclesr-deploy[cpu]')"
    why = why or probe.onnx_missing("fp32")
    if why is None:
        prec, how, prec_rejected = probe.openvino_precision(precision)
        rejected += [(f"openvino-{p}", w) for p, w in prec_rejected]
        if prec is None:
            why = how
        else:
            args = {"path": model_dir, "precision": prec, "device": "CPU"}
            args["threads"] = common["threads"]
            reason = f"OpenVINO on the CPU ({prec}): no GPU backend usable; {how}"
            return _Plan("openvino-cpu", args, reason, rejected)
    rejected.append(("openvino-cpu", why))

    # 5. ONNX Runtime on the CPU
    why = None if cpu_ok else "device='cuda' requested"
    if why is None and probe.ort_providers is None:
        why = "onnxruntime not installed (pip install 'cyclesr-deploy[cpu]')"
    if why is None and precision in CPU_ONLY_PRECISIONS:
        why = f"{precision} is OpenVINO's"
    prec = "fp32" if why else _ort_precision(precision, False, probe)
    why = why or probe.onnx_missing(prec)
    if why is None:
        args = {"path": model_dir, "precision": prec, "providers": "cpu", **common}
        reason = f"ONNX Runtime on CPUExecutionProvider ({prec}): no GPU backend usable"
        return _Plan("onnxruntime-cpu", args, reason, rejected)
    rejected.append(("onnxruntime-cpu", why))

    # 6. PyTorch on the CPU
    why = None if cpu_ok else "device='cuda' requested"
    if why is None and not module_available("torch"):
        why = "torch not installed (pip install 'cyclesr-deploy[train]')"
    why = why or probe.weights_missing()
    if why is None and precision in ("fp16", *CPU_ONLY_PRECISIONS):
        why = f"{precision} is not PyTorch's on the CPU"
    if why is None:
        args = {"path": model_dir, "device": "cpu", "precision": "fp32", **common}
        reason = "PyTorch on the CPU (fp32): no GPU backend and no ONNX Runtime usable"
        return _Plan("torch-cpu", args, reason, rejected)
    rejected.append(("torch-cpu", why))

    lines = "\n".join(f"  - {label}: {why}" for label, why in rejected)
    raise InputError(f"no backend can run {model_dir}:\n{lines}")


def _cpu_only(precision: str) -> str | None:
    if precision in CPU_ONLY_PRECISIONS:
        return f"{precision} is a CPU precision of OpenVINO"
    return None


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip(" -") for line in str(exc).splitlines() if line.strip())
