"""ONNX Runtime backend: the exported ONNX on the TensorRT, CUDA or CPU execution provider.

``onnxruntime`` (extra ``cpu``) or ``onnxruntime-gpu`` (extra ``gpu``; never both) is imported
when the engine is created. ``providers="auto"`` asks for TensorRT EP > CUDA EP > CPU among
``onnxruntime.get_available_providers()``. A GPU build lists the GPU providers even where they
cannot run (no GPU, CUDA/cuDNN/TensorRT libraries not found) and then silently runs on the CPU,
so :attr:`OnnxRuntimeEngine.name` reports ``session.get_providers()[0]``, the provider actually
used, and a fallback is logged as a warning.

On the CUDA and TensorRT providers the engine uses I/O binding: per input shape, one input
``OrtValue`` on the device (filled with ``update_inplace``) and one preallocated host output array
that ONNX Runtime copies into, so a steady stream of equal-shape batches allocates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.errors import InputError, MissingExtraError, require
from cyclesr_deploy.model import MODEL_JSON, ONNX_BY_PRECISION, ModelConfig, ModelFolder, load_model
from cyclesr_deploy.onnx_metadata import parse_metadata, read_onnx_metadata

if TYPE_CHECKING:
    from cyclesr_deploy.engines.select import Selection

log = logging.getLogger("cyclesr_deploy.engines")

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
GPU_PROVIDERS = (TRT_EP, CUDA_EP)
#: ONNX file per precision in a model folder (``cyclesr export onnx`` writes both).
INPUT_NAME = "input"  # the exporter's name; the session's own replaces it on open
_MAX_BINDINGS = 8  # shapes kept bound at once (a pipeline uses one or two)

Precision = Literal["fp32", "fp16"]


def resolve_providers(requested: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """The provider list to ask for: ``"auto"`` -> TensorRT EP, CUDA EP (those available),
    then CPU; ``"cpu"`` -> CPU only; ``"cuda"`` -> the available GPU providers then CPU
    (MissingExtraError ``gpu`` when there is none); a list is used as given, CPU appended as
    the fallback for unsupported nodes. InputError for a provider this build does not have."""
    if isinstance(requested, str):
        if requested == "auto":
            return [p for p in (*GPU_PROVIDERS, CPU_EP) if p in available or p == CPU_EP]
        if requested == "cpu":
            return [CPU_EP]
        if requested == "cuda":
            gpu = [p for p in GPU_PROVIDERS if p in available]
            if not gpu:
                raise MissingExtraError(
                    "onnxruntime-gpu",
                    "gpu",
                    f"ONNX Runtime on the GPU (this onnxruntime has {', '.join(available)})",
                )
            return [*gpu, CPU_EP]
        raise InputError(
            f"providers: {requested!r} is not 'auto', 'cpu', 'cuda' or a list of providers"
        )
    wanted = list(requested)
    unknown = [p for p in wanted if p not in available]
    if unknown:
        raise InputError(
            f"providers: {', '.join(unknown)} not available in this onnxruntime "
            f"(available: {', '.join(available)}); GPU providers need onnxruntime-gpu "
            "(pip install 'cyclesr-deploy[gpu]')"
        )
    if CPU_EP not in wanted:
        wanted.append(CPU_EP)
    return wanted


def provider_options(
    provider: str, *, device_id: int, precision: Precision, model_dir: Path | None
) -> dict[str, Any]:
    """Options per provider (deploy notes §4.1/§4.2). TensorRT EP: FP16 for fp16, engine
    cache in ``MODEL_DIR/engines/onnxruntime-trt`` (engines depend on model, GPU and versions,
    so they stay with the model), one timing cache per user (shared by models), builder
    optimization level 3, 4 GiB workspace. CUDA EP: the device. The TensorRT EP builds its
    engine on the first run of each new shape range (minutes), then loads it from the cache."""
    if provider == TRT_EP:
        from cyclesr_deploy.engines.trt_config import default_timing_cache_dir

        opts: dict[str, Any] = {
            "device_id": device_id,
            "trt_fp16_enable": precision == "fp16",
            "trt_builder_optimization_level": 3,
            "trt_max_workspace_size": 4 << 30,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(default_timing_cache_dir() / "onnxruntime"),
        }
        if model_dir is not None:
            opts["trt_engine_cache_enable"] = True
            opts["trt_engine_cache_path"] = str(ModelFolder(model_dir).ort_trt_cache)
        return opts
    if provider == CUDA_EP:
        return {"device_id": device_id}
    return {}


@dataclass
class _Binding:
    """One bound shape: the IOBinding, the device input OrtValue, the host output array."""

    io: Any
    x: Any
    out: np.ndarray


class OnnxRuntimeEngine:
    """The generator in an ONNX Runtime ``InferenceSession``.

    Args:
        onnx_path: a model folder (``precision`` picks ``generator.onnx`` or
            ``generator.fp16.onnx``) or an ONNX file exported by ``cyclesr export onnx``.
        providers: ``"auto"`` (TensorRT EP > CUDA EP > CPU, whichever this onnxruntime has),
            ``"cpu"``, ``"cuda"`` (GPU providers required) or an explicit provider list.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
        precision: ``"fp32"``/``"fp16"``; None: fp32 for a folder, the file's own for a file.
        device_id: CUDA device for the GPU providers.
        io_binding: None: on for the GPU providers, off on the CPU; True on the CPU binds
            host OrtValues (same code path, used by the tests).
        options: extra provider options, ``{provider: {key: value}}``, over the defaults of
            :func:`provider_options`.

    Buffer contract: without I/O binding (CPU) every call returns a new array; with it, the
    array returned for a shape is overwritten by the next call with that shape.
    """

    #: Set by :func:`~cyclesr_deploy.engines.open_engine`: why this engine was chosen.
    selection: Selection | None = None

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        providers: str | Sequence[str] = "auto",
        threads: int | None = None,
        precision: Precision | None = None,
        device_id: int = 0,
        io_binding: bool | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        path = Path(onnx_path)
        if precision not in (None, "fp32", "fp16"):
            raise InputError(f"precision must be 'fp32' or 'fp16', not {precision!r}")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        if path.is_dir():
            self.model_dir: Path | None = path
            precision = precision or "fp32"
            path = path / ONNX_BY_PRECISION[precision]
            if not path.is_file():
                raise InputError(
                    f"{path}: ONNX not found; export it first (cyclesr export onnx {path.parent})"
                )
            self.model = load_model(self.model_dir)
        elif path.is_file():
            beside = path.parent / MODEL_JSON
            self.model_dir = path.parent if beside.is_file() else None
            if self.model_dir is not None:
                self.model = load_model(self.model_dir)
            else:  # a bare file: its embedded model.json
                meta = read_onnx_metadata(path)
                self.model = meta.model
                precision = precision or meta.precision
        else:
            raise InputError(
                f"{path}: no such ONNX file or model folder (export one with cyclesr export onnx)"
            )
        self.ort = require("onnxruntime", "cpu", "ONNX Runtime inference (or the 'gpu' extra)")
        self.onnx_path = path
        self.precision: Precision | None = precision
        self.threads = threads
        self.device_id = int(device_id)
        available = list(self.ort.get_available_providers())
        self.requested = resolve_providers(providers, available)
        self.provider_overrides = {k: dict(v) for k, v in (options or {}).items()}
        self.io_binding = io_binding
        self.providers: list[str] = []
        self.input_spec = _spec_of(self.model)
        self.name = self._name(self.requested[0])
        self._session: Any = None
        self._bindings: dict[tuple[int, ...], _Binding] | None = None
        self._out_channels = self.model.generator.out_channels
        self._input_name = self.input_spec.name
        self._output_names: list[str] = []

    def _name(self, provider: str) -> str:
        return f"onnxruntime[{provider}{',fp16' if self.precision == 'fp16' else ''}]"

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> OnnxRuntimeEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the session (idempotent) and check it against the model config."""
        if self._session is not None:
            return
        session = self._create_session()
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(
                f"{self.onnx_path}: expected one input and one output, got "
                f"{[i.name for i in inputs]} / {[o.name for o in outputs]}"
            )
        self._check_metadata(session)
        self._input_name = inputs[0].name
        self._output_names = [outputs[0].name]
        self.input_spec = replace(self.input_spec, name=self._input_name)
        self.providers = list(session.get_providers())
        self.name = self._name(self.providers[0])
        on_gpu = self.providers[0] in GPU_PROVIDERS
        self._device = "cuda" if on_gpu else "cpu"
        use_binding = on_gpu if self.io_binding is None else self.io_binding
        self._bindings = {} if use_binding else None
        self._session = session
        log.info("ONNX Runtime session on %s for %s", ", ".join(self.providers), self.onnx_path)

    def close(self) -> None:
        """Release the session and the bound buffers (idempotent)."""
        self._bindings = None
        self._session = None

    @property
    def session(self) -> Any:
        """The ``InferenceSession`` while open, else None."""
        return self._session

    def _create_session(self) -> Any:
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3  # errors; provider fallbacks are reported below
        providers = []
        for p in self.requested:
            opts = provider_options(
                p,
                device_id=self.device_id,
                precision=self.precision or "fp32",
                model_dir=self.model_dir,
            )
            opts.update(self.provider_overrides.get(p, {}))
            providers.append((p, opts))
        if self.model_dir is not None:
            folder = ModelFolder(self.model_dir)
            folder.verify(self.onnx_path)  # refuses a graph export.json does not know
            if TRT_EP in self.requested:
                folder.ort_trt_cache.mkdir(parents=True, exist_ok=True)
        wanted_gpu = [p for p in self.requested if p in GPU_PROVIDERS]
        try:
            session = ort.InferenceSession(
                str(self.onnx_path), sess_options=so, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own, non-exported exception types
            if not wanted_gpu:
                raise InputError(
                    f"onnx: ONNX Runtime cannot load {self.onnx_path} ({exc})"
                ) from exc
            # some onnxruntime-gpu versions raise instead of falling back (ORT#21424)
            log.warning(
                "ONNX Runtime could not start %s (%s); falling back to %s",
                ", ".join(wanted_gpu),
                exc,
                CPU_EP,
            )
            try:
                session = ort.InferenceSession(
                    str(self.onnx_path), sess_options=so, providers=[CPU_EP]
                )
            except Exception as exc2:
                raise InputError(
                    f"onnx: ONNX Runtime cannot load {self.onnx_path} ({exc2})"
                ) from exc2
        actual = list(session.get_providers())
        lost = [p for p in wanted_gpu if p not in actual]
        if lost:
            log.warning(
                "ONNX Runtime was asked for %s but runs on %s: %s unavailable here (no GPU, or "
                "CUDA/cuDNN/TensorRT libraries not found; onnxruntime.print_debug_info() "
                "lists what it found)",
                ", ".join(wanted_gpu),
                actual[0],
                ", ".join(lost),
            )
        return session

    def _check_metadata(self, session: Any) -> None:
        """The file's embedded model.json must describe the same generator shape-wise, and its
        precision the one asked for."""
        props = dict(session.get_modelmeta().custom_metadata_map)
        if not props:
            return
        meta = parse_metadata(props, source=str(self.onnx_path))
        ours, theirs = self.model.generator, meta.model.generator
        fields = ("in_channels", "out_channels", "scale", "downscale")
        if any(getattr(ours, f) != getattr(theirs, f) for f in fields):
            raise InputError(
                f"{self.onnx_path} was exported from another generator than the one in "
                f"{MODEL_JSON} (scale {theirs.scale} vs {ours.scale}, channels "
                f"{theirs.in_channels}->{theirs.out_channels} vs "
                f"{ours.in_channels}->{ours.out_channels}); re-export it "
                f"(cyclesr export onnx --overwrite)"
            )
        if self.precision is None:
            self.precision = meta.precision
        elif meta.precision != self.precision:
            raise InputError(
                f"{self.onnx_path} is an {meta.precision} ONNX, but precision={self.precision!r} "
                "was asked for"
            )

    # --- inference ------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, C', H*s, W*s) float32 (see the buffer contract)."""
        if self._session is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")
        if self._bindings is None:
            return self._session.run(self._output_names, {self._input_name: batch})[0]
        binding = self._bindings.get(batch.shape)
        if binding is None:
            binding = self._bind(batch.shape)
        binding.x.update_inplace(batch)
        self._session.run_with_iobinding(binding.io)
        if self._device != "cpu":
            binding.io.synchronize_outputs()
        return binding.out

    def _bind(self, shape: tuple[int, ...]) -> _Binding:
        """Bind a device input OrtValue and a host output array for ``shape`` (cached)."""
        assert self._bindings is not None
        if len(self._bindings) >= _MAX_BINDINGS:
            self._bindings.pop(next(iter(self._bindings)))
        n, _, h, w = shape
        s = self.input_spec.scale
        out = np.empty((n, self._out_channels, h * s, w * s), dtype=np.float32)
        x = self.ort.OrtValue.ortvalue_from_shape_and_type(
            list(shape), np.float32, self._device, self.device_id
        )
        io = self._session.io_binding()
        io.bind_ortvalue_input(self._input_name, x)
        io.bind_output(
            self._output_names[0], "cpu", 0, np.float32, list(out.shape), out.ctypes.data
        )
        binding = _Binding(io=io, x=x, out=out)
        self._bindings[tuple(shape)] = binding
        return binding

    def __repr__(self) -> str:
        state = "open" if self._session is not None else "closed"
        return f"OnnxRuntimeEngine({str(self.onnx_path)!r}, {self.name}, {state})"


def _spec_of(model: ModelConfig) -> TensorSpec:
    return TensorSpec(
        name=INPUT_NAME,
        shape=(None, model.generator.in_channels, None, None),
        dtype=np.dtype(np.float32),
        size_multiple=model.size_multiple,
        scale=model.scale,
    )
