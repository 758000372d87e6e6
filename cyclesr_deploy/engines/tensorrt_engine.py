"""TensorRT backend: a serialized engine from ``MODEL_DIR/engines`` run with cuda-python.

Runtime path (TensorRT 10/11 Python API, deploy notes §2.3/§2.5)::

    engine  = load_engine(path)                      # sidecar checked, cudaSetDevice, deserialize
    context = engine.create_execution_context()      # one, for optimization profile 0
    stream  = cudaStreamCreateWithFlags(NonBlocking) # never the default stream
    device input/output buffers for the profile's max shape, pinned host input/output buffers,
    set_tensor_address(input/output) once
    per call: copy batch -> pinned input; set_input_shape (when the shape changes);
              HtoD async; execute_async_v3(stream); DtoH async; cudaStreamSynchronize

``tensorrt`` and cuda-python (extra ``tensorrt``) are imported when the engine is opened.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.engines.trt_config import (
    EngineSidecar,
    read_sidecar,
    sidecar_path,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ENGINES_DIR, MODEL_JSON, ModelConfig, ModelFolder, load_model

if TYPE_CHECKING:
    from cyclesr_deploy.engines.select import Selection

log = logging.getLogger("cyclesr_deploy.engines")


def spec_from_sidecar(sidecar: EngineSidecar, model: ModelConfig) -> TensorSpec:
    """The input spec of an engine: batch up to the profile's max (smaller batches are padded
    to its min), H and W within the profile's min..max (one profile per engine)."""
    prof = sidecar.profiles[0]
    return _spec(sidecar.input_name, prof.min, prof.max, model)


def _spec(name: str, lo: tuple[int, ...], hi: tuple[int, ...], model: ModelConfig) -> TensorSpec:
    static_hw = lo[2:] == hi[2:]
    return TensorSpec(
        name=name,
        shape=(None, int(hi[1]), *((int(hi[2]), int(hi[3])) if static_hw else (None, None))),
        dtype=np.dtype(np.float32),
        size_multiple=model.size_multiple,
        scale=model.scale,
        max_batch=int(hi[0]),
        max_tile=(int(hi[2]), int(hi[3])),
        min_tile=(int(lo[2]), int(lo[3])),
    )


class TensorRTEngine:
    """A TensorRT engine built by ``cyclesr export tensorrt`` for this GPU.

    Args:
        engine: an ``.engine`` file in ``MODEL_DIR/engines`` (with its ``.json`` sidecar), or a
            model folder: then the newest engine whose sidecar fits this machine (fp16 before
            fp32 unless ``precision`` is given) is used.
        device_id: CUDA device (``cudaSetDevice`` before deserializing).
        precision: with a model folder, ``"fp16"``/``"fp32"`` restricts the choice.
        check: verify the sidecar against this machine and the engine's sha256 (default).

    ``input_spec.max_batch``/``max_tile``/``min_tile`` come from the engine's optimization
    profile (from the sidecar before opening, from the engine once open). A batch smaller
    than the profile's minimum (static engines: the build batch) is padded with zeros.

    Buffer contract: ``infer`` returns a view of a pinned host buffer that the next call
    overwrites.

    Engines of the frozen-statistics graphs (:mod:`cyclesr_deploy.engines.tensorrt_frozen`)
    have, besides the image input named in the sidecar, inputs of static shape (the packed
    statistics vector): they get device buffers once, filled by :meth:`set_static_input`; and
    an output without a batch axis (the statistics graph's vector) is returned whole.
    """

    #: Set by :func:`~cyclesr_deploy.engines.open_engine`: why this engine was chosen.
    selection: Selection | None = None

    def __init__(
        self,
        engine: str | Path,
        *,
        device_id: int = 0,
        precision: str | None = None,
        check: bool = True,
    ) -> None:
        path = Path(engine)
        if path.is_dir():
            from cyclesr_deploy.engines.tensorrt_load import find_engine

            path = find_engine(path, precision=precision, device_id=device_id).engine_path
        if not path.is_file():
            raise InputError(f"{path}: no such TensorRT engine")
        model_dir = path.parent.parent
        if path.parent.name != ENGINES_DIR or not (model_dir / MODEL_JSON).is_file():
            raise InputError(
                f"{path}: a TensorRT engine must live in MODEL_DIR/{ENGINES_DIR} next to the "
                f"model's {MODEL_JSON} (build it with: cyclesr export tensorrt MODEL_DIR)"
            )
        self.engine_path = path
        self.model_dir = model_dir
        self.model = load_model(model_dir)
        self.sidecar = read_sidecar(sidecar_path(path))
        self.device_id = int(device_id)
        self.check = check
        self.precision = self.sidecar.precision
        self.name = f"tensorrt[{self.precision}]"
        self.input_spec = spec_from_sidecar(self.sidecar, self.model)
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: list[Any] = []
        self._shape: tuple[int, ...] | None = None
        self._static: dict[str, tuple[Any, Any]] = {}  # name -> (pinned host, device) buffers

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> TensorRTEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._context is not None

    def open(self) -> None:
        """Deserialize the engine, create the context, stream and buffers (idempotent)."""
        if self._context is not None:
            return
        from cyclesr_deploy import cuda_runtime as cr
        from cyclesr_deploy.engines.tensorrt_load import load_engine
        from cyclesr_deploy.errors import require

        trt = require("tensorrt", "tensorrt", "TensorRT inference")
        # the engine's bytes are checked against its sidecar by load_engine; the ONNX it was
        # built from against export.json here
        ModelFolder(self.model_dir).verify(self.sidecar.onnx_file)
        engine = load_engine(self.engine_path, check=self.check, device=self.device_id)
        try:
            self._setup(engine, trt, cr)
        except BaseException:
            self.close()
            raise

    def _setup(self, engine: Any, trt: Any, cr: Any) -> None:
        inputs, outputs = cr.io_tensor_names(engine, trt)
        main = self.sidecar.input_name if self.sidecar.input_name in inputs else inputs[0]
        static = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in inputs if n != main}
        dynamic = [n for n, shape in static.items() if any(d < 0 for d in shape)]
        if len(outputs) != 1 or dynamic:
            raise InputError(
                f"{self.engine_path}: expected one image input (plus inputs of static shape) "
                f"and one output, got inputs {inputs} (dynamic: {[main, *dynamic]}), outputs "
                f"{outputs}"
            )
        self._in, self._out = main, outputs[0]
        self._in_dtype = cr._np_dtype(trt, engine.get_tensor_dtype(self._in))
        self._out_dtype = cr._np_dtype(trt, engine.get_tensor_dtype(self._out))
        if engine.num_optimization_profiles != 1:
            log.warning(
                "%s has %d optimization profiles; using profile 0",
                self.engine_path.name,
                engine.num_optimization_profiles,
            )
        lo, _, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(self._in, 0))
        self._min, self._max = lo, hi
        self.input_spec = _spec(self._in, lo, hi, self.model)
        self._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise RuntimeError(
                "IExecutionContext could not be created (out of GPU memory?) for "
                f"{self.engine_path}"
            )
        self._context = context
        if not context.set_input_shape(self._in, hi):
            raise RuntimeError(f"the engine rejects its own max shape {hi}")
        out_max = tuple(int(d) for d in context.get_tensor_shape(self._out))
        self._stream = cr.Stream()
        self._h_in = cr.PinnedBuffer(int(np.prod(hi)), self._in_dtype)
        self._h_out = cr.PinnedBuffer(int(np.prod(out_max)), self._out_dtype)
        self._d_in = cr.DeviceBuffer(self._h_in.nbytes)
        self._d_out = cr.DeviceBuffer(self._h_out.nbytes)
        self._buffers = [self._h_in, self._h_out, self._d_in, self._d_out]
        addresses = [(self._in, self._d_in), (self._out, self._d_out)]
        for name, shape in static.items():
            host = cr.PinnedBuffer(shape, cr._np_dtype(trt, engine.get_tensor_dtype(name)))
            device = cr.DeviceBuffer(host.nbytes)
            self._buffers += [host, device]
            self._static[name] = (host, device)
            addresses.append((name, device))
        for name, buf in addresses:
            if not context.set_tensor_address(name, buf.ptr):
                raise RuntimeError(f"set_tensor_address({name!r}) failed")
        self._shape = None
        self._cr = cr
        self._thread = threading.get_ident()
        log.info(
            "TensorRT engine %s on device %d (profile %s..%s)",
            self.engine_path.name,
            self.device_id,
            lo,
            hi,
        )

    def close(self) -> None:
        """Wait for queued work, free buffers and the stream, drop context and engine."""
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.synchronize()
        for buf in self._buffers:
            buf.close()
        self._buffers = []
        self._static = {}
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        self._context = None  # the context before the engine it belongs to
        self._engine = None
        self._shape = None

    # --- inference ------------------------------------------------------------------------

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        """Set the context's input shape for a batch of ``shape`` (N padded up to the
        profile's min) and prepare the pinned views; InputError outside the profile."""
        n = shape[0]
        run = (max(n, self._min[0]), *shape[1:])
        if not self._context.set_input_shape(self._in, run):
            raise InputError(
                f"batch shape {tuple(shape)} is outside the TensorRT engine's profile "
                f"(min {self._min}, max {self._max}); use tiles and batches within it or "
                "rebuild the engine (cyclesr export tensorrt)"
            )
        out = tuple(int(d) for d in self._context.get_tensor_shape(self._out))
        in_view = self._h_in.array[: int(np.prod(run))].reshape(run)
        in_view[n:] = 0  # padding rows, written once per shape
        out_view = self._h_out.array[: int(np.prod(out))].reshape(out)
        batched = len(out) == len(run)  # the statistics graph's output has no batch axis
        self._views = (in_view, out_view, out_view[:n] if batched else out_view)
        self._shape = tuple(shape)

    def _this_thread_on_device(self) -> None:
        """cudaSetDevice in a thread that has not used this engine yet: the current device is
        per thread, and the context and buffers belong to ``device_id`` (TRT#322)."""
        if self._thread != threading.get_ident():
            self._cr.set_device(self.device_id)
            self._thread = threading.get_ident()

    def static_inputs(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the inputs of static shape (empty for a generator engine)."""
        return {name: host.array.shape for name, (host, _dev) in self._static.items()}

    def set_static_input(self, name: str, value: np.ndarray) -> None:
        """Copy ``value`` into the device buffer of static input ``name``; it stays there for
        every later :meth:`infer` until set again (stream-ordered before them)."""
        if self._context is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")
        if name not in self._static:
            raise InputError(f"{self.engine_path.name} has no static input {name!r}")
        self._this_thread_on_device()
        host, device = self._static[name]
        value = np.asarray(value)
        if value.size != host.array.size:
            raise InputError(
                f"{name}: {value.size} values for an input of {host.array.size} "
                f"({self.engine_path.name})"
            )
        self._stream.synchronize()  # the previous infer may still read the buffer
        host.array[...] = value.reshape(host.array.shape)
        self._cr.memcpy_htod_async(device, host.array, self._stream)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> view of the pinned output (N, C', H*s, W*s) float32."""
        if self._context is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")
        self._this_thread_on_device()
        if batch.shape != self._shape:
            self._set_shape(batch.shape)
        in_view, out_view, result = self._views
        in_view[: batch.shape[0]] = batch
        cr, stream = self._cr, self._stream
        cr.memcpy_htod_async(self._d_in, in_view, stream)
        if not self._context.execute_async_v3(stream.handle):
            stream.synchronize()
            raise RuntimeError(f"execute_async_v3 failed for {self.engine_path.name} (see log)")
        cr.memcpy_dtoh_async(out_view, self._d_out, stream)
        stream.synchronize()
        if result.dtype != np.float32:  # engines built by cyclesr have FP32 I/O
            return result.astype(np.float32)
        return result

    def __repr__(self) -> str:
        state = "open" if self._context is not None else "closed"
        return f"TensorRTEngine({str(self.engine_path)!r}, {self.name}, {state})"
