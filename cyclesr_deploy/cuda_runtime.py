"""Small CUDA runtime helpers on cuda-python (no pycuda, no torch): errors, device facts,
device and pinned buffers, streams, async copies, and a one-shot TensorRT inference.

cuda-python is imported lazily, on first use, by :func:`runtime_module`:

* ``from cuda.bindings import runtime``: cuda-python 12.6+ and 13.x (the only layout in 13.x);
* ``from cuda import cudart``: older 12.x, whose shim 13.0 removed.

Whichever imports is used; both expose the same ``cuda*`` functions, which return
``(cudaError_t, *results)`` tuples that :func:`check` unwraps (the pattern of TensorRT's
``samples/python/common_runtime.py``). The NVIDIA driver release comes from NVML
(``cuda.bindings.nvml``, cuda-python 12.9+/13.x) when available.

Buffers are freed by ``close()`` / ``with`` blocks, or when garbage collected; never at
interpreter exit (process teardown frees them and CUDA may already be shut down).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cyclesr_deploy.errors import InputError, MissingExtraError

_PURPOSE = "TensorRT inference and engine building (CUDA memory and streams)"


def runtime_module() -> Any:
    """The cuda-python runtime module: ``cuda.bindings.runtime``, else ``cuda.cudart``.

    Raises MissingExtraError (extra ``tensorrt``) when neither imports.
    """
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        pass
    try:
        return importlib.import_module("cuda.cudart")
    except ImportError as exc:
        raise MissingExtraError("cuda-python", "tensorrt", _PURPOSE) from exc


class CudaError(RuntimeError):
    """A CUDA runtime call failed; ``code`` is the cudaError_t value, ``name`` its name."""

    def __init__(self, code: int, name: str, message: str, call: str = "") -> None:
        where = f"{call}: " if call else ""
        super().__init__(f"{where}{name} ({code}): {message}")
        self.code = code
        self.name = name


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(value)


def _error_text(rt: Any, err: Any) -> tuple[str, str]:
    name = getattr(err, "name", None) or f"cudaError {int(err)}"
    message = ""
    try:
        res = rt.cudaGetErrorString(err)
        if int(res[0]) == 0:
            message = _text(res[1])
    except Exception:  # error reporting must not fail
        pass
    return name, message or "CUDA error"


def check(result: Any, call: str = "") -> Any:
    """Unwrap a cuda-python result ``(err, *values)``: raise :class:`CudaError` unless ``err``
    is cudaSuccess (0); return None, the single value, or the tuple of values."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    code = int(err)
    if code != 0:
        name, message = _error_text(runtime_module(), err)
        raise CudaError(code, name, message, call)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# --- device facts -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """``cudaGetDeviceProperties``: name, compute capability 'major.minor', total memory."""

    index: int
    name: str
    compute_capability: str
    total_memory: int


def _version_text(v: int) -> str:
    """CUDA encodes versions as 1000*major + 10*minor (12090 -> '12.9')."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def device_count() -> int:
    """``cudaGetDeviceCount``; raises CudaError without a driver or device."""
    rt = runtime_module()
    return int(check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))


def cuda_available() -> bool:
    """True when cuda-python imports and at least one CUDA device is usable."""
    try:
        return device_count() > 0
    except (MissingExtraError, CudaError):
        return False


def set_device(index: int = 0) -> None:
    """``cudaSetDevice``: engines and buffers belong to the device current when created
    (TensorRT#322); call it before building/deserializing and in each worker thread."""
    rt = runtime_module()
    check(rt.cudaSetDevice(int(index)), "cudaSetDevice")


def device_properties(index: int = 0) -> DeviceInfo:
    rt = runtime_module()
    prop = check(rt.cudaGetDeviceProperties(int(index)), "cudaGetDeviceProperties")
    return DeviceInfo(
        index=int(index),
        name=_text(prop.name).strip(),
        compute_capability=f"{int(prop.major)}.{int(prop.minor)}",
        total_memory=int(prop.totalGlobalMem),
    )


def driver_version() -> str:
    """Newest CUDA version the installed driver supports (``cudaDriverGetVersion``), '13.0'."""
    rt = runtime_module()
    return _version_text(int(check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")))


def runtime_version() -> str:
    """CUDA runtime version cuda-python links (``cudaRuntimeGetVersion``), '12.9'."""
    rt = runtime_module()
    return _version_text(int(check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")))


def nvidia_driver_version() -> str | None:
    """NVIDIA display driver release ('580.65.06') via NVML (``cuda.bindings.nvml``), or None
    when NVML is not available (older cuda-python, no driver library)."""
    try:
        nvml = importlib.import_module("cuda.bindings.nvml")
        nvml.init_v2()
    except Exception:
        return None
    try:
        return _text(nvml.system_get_driver_version()).strip() or None
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.shutdown()


# --- memory and streams -------------------------------------------------------------------


def _release(free: Callable[[int], Any], ptr: int, call: str) -> None:
    check(free(ptr), call)


class DeviceBuffer:
    """``cudaMalloc`` of ``nbytes`` on the current device; ``ptr`` is the device address (int)
    for ``IExecutionContext.set_tensor_address``. Freed (``cudaFree``) by ``close()``, at the
    end of a ``with`` block, or when collected."""

    def __init__(self, nbytes: int) -> None:
        nbytes = int(nbytes)
        if nbytes <= 0:
            raise InputError(f"DeviceBuffer: nbytes must be positive, got {nbytes}")
        rt = runtime_module()
        self.nbytes = nbytes
        self.ptr = int(check(rt.cudaMalloc(nbytes), "cudaMalloc"))
        self._finalizer = weakref.finalize(self, _release, rt.cudaFree, self.ptr, "cudaFree")
        self._finalizer.atexit = False

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Free the memory (idempotent)."""
        self._finalizer()

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"ptr=0x{self.ptr:x}"
        return f"DeviceBuffer({self.nbytes} bytes, {state})"


class PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``) seen as a numpy array ``array`` of
    ``shape``/``dtype``: the source/target of truly asynchronous copies. Freed with
    ``cudaFreeHost`` by ``close()``/``with``/collection; do not use ``array`` after that."""

    def __init__(self, shape: tuple[int, ...] | int, dtype: Any = np.float32) -> None:
        self.shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if self.nbytes <= 0:
            raise InputError(f"PinnedBuffer: empty shape {self.shape}")
        rt = runtime_module()
        self.ptr = int(check(rt.cudaMallocHost(self.nbytes), "cudaMallocHost"))
        self._finalizer = weakref.finalize(
            self, _release, rt.cudaFreeHost, self.ptr, "cudaFreeHost"
        )
        self._finalizer.atexit = False
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)
        self._array: np.ndarray | None = (
            np.ctypeslib.as_array(raw).view(self.dtype).reshape(self.shape)
        )

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            raise ValueError("PinnedBuffer is closed")
        return self._array

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Drop the numpy view and free the memory (idempotent)."""
        self._array = None
        self._finalizer()

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream:
    """A non-blocking CUDA stream (``cudaStreamCreateWithFlags(cudaStreamNonBlocking)``);
    ``handle`` (int) is what ``IExecutionContext.execute_async_v3`` takes. TensorRT warns that
    the default stream costs extra synchronizations, hence one stream per worker."""

    def __init__(self) -> None:
        rt = runtime_module()
        self._stream = check(
            rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"
        )
        self.handle = int(self._stream)
        self._rt = rt
        self._finalizer = weakref.finalize(
            self, _release, rt.cudaStreamDestroy, self._stream, "cudaStreamDestroy"
        )
        self._finalizer.atexit = False

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def synchronize(self) -> None:
        """``cudaStreamSynchronize``: wait for all work queued on this stream."""
        check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        """Destroy the stream (idempotent). Synchronize first if work may be pending."""
        self._finalizer()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _device_ptr(buf: DeviceBuffer | int, nbytes: int) -> int:
    if isinstance(buf, DeviceBuffer):
        if buf.closed:
            raise ValueError("DeviceBuffer is closed")
        if nbytes > buf.nbytes:
            raise InputError(f"copy of {nbytes} bytes does not fit a {buf.nbytes}-byte buffer")
        return buf.ptr
    return int(buf)


def _stream_handle(stream: Stream | int | None) -> int:
    if stream is None:
        return 0
    return stream.handle if isinstance(stream, Stream) else int(stream)


def _host_array(arr: Any, name: str, writeable: bool = False) -> np.ndarray:
    if isinstance(arr, PinnedBuffer):
        arr = arr.array
    if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
        raise InputError(f"{name}: expected a C-contiguous numpy array")
    if writeable and not arr.flags.writeable:
        raise InputError(f"{name}: array is read-only")
    return arr


def memcpy_htod_async(
    dst: DeviceBuffer | int, src: np.ndarray | PinnedBuffer, stream: Stream | int | None
) -> None:
    """``cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream)``. ``src`` must stay
    alive and unchanged until the stream is synchronized; pinned memory makes the copy truly
    asynchronous (pageable memory is staged by the driver)."""
    rt = runtime_module()
    host = _host_array(src, "src")
    check(
        rt.cudaMemcpyAsync(
            _device_ptr(dst, host.nbytes),
            host.ctypes.data,
            host.nbytes,
            rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            _stream_handle(stream),
        ),
        "cudaMemcpyAsync(HtoD)",
    )


def memcpy_dtoh_async(
    dst: np.ndarray | PinnedBuffer, src: DeviceBuffer | int, stream: Stream | int | None
) -> None:
    """``cudaMemcpyAsync(dst, src, dst.nbytes, cudaMemcpyDeviceToHost, stream)``; ``dst`` is
    valid after the stream is synchronized."""
    rt = runtime_module()
    host = _host_array(dst, "dst", writeable=True)
    check(
        rt.cudaMemcpyAsync(
            host.ctypes.data,
            _device_ptr(src, host.nbytes),
            host.nbytes,
            rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            _stream_handle(stream),
        ),
        "cudaMemcpyAsync(DtoH)",
    )


# --- one-shot TensorRT inference ------------------------------------------------------------

_TRT_TO_NUMPY = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT32": np.int32,
    "INT64": np.int64,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def _np_dtype(trt: Any, dtype: Any) -> np.dtype:
    """numpy dtype of a ``trt.DataType`` (``trt.nptype``, else by member name)."""
    nptype = getattr(trt, "nptype", None)
    if nptype is not None:
        try:
            return np.dtype(nptype(dtype))
        except (TypeError, KeyError):
            pass
    name = getattr(dtype, "name", str(dtype)).rsplit(".", 1)[-1]
    if name not in _TRT_TO_NUMPY:
        raise InputError(f"TensorRT tensor type {name} has no numpy equivalent")
    return np.dtype(_TRT_TO_NUMPY[name])


def io_tensor_names(engine: Any, trt: Any) -> tuple[list[str], list[str]]:
    """(inputs, outputs) from ``ICudaEngine.num_io_tensors``/``get_tensor_name``/
    ``get_tensor_mode``."""
    inputs: list[str] = []
    outputs: list[str] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs).append(name)
    return inputs, outputs


def infer_once(engine: Any, batch: np.ndarray, *, input_name: str | None = None) -> np.ndarray:
    """Run ``batch`` (N, C, H, W) through a deserialized ``ICudaEngine`` once; float32 output.

    For validation (the real-engine tests compare it with ONNX Runtime), not for throughput:
    it creates an ``IExecutionContext``, a stream and buffers per call. Sequence:
    ``set_input_shape`` -> ``get_tensor_shape`` of the output -> ``cudaMemcpyAsync`` HtoD from
    pinned memory -> ``set_tensor_address`` for every I/O tensor -> ``execute_async_v3(stream)``
    -> DtoH -> ``cudaStreamSynchronize``. The engine must have one input and one output.
    """
    from cyclesr_deploy.errors import require

    trt = require("tensorrt", "tensorrt", "TensorRT inference")
    inputs, outputs = io_tensor_names(engine, trt)
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(
            f"expected an engine with one input and one output, got {inputs}/{outputs}"
        )
    in_name = input_name or inputs[0]
    if in_name != inputs[0]:
        raise InputError(f"engine input is {inputs[0]!r}, not {in_name!r}")
    out_name = outputs[0]
    x = np.asarray(batch)
    if x.ndim != 4:
        raise InputError(f"batch: expected (N, C, H, W), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=_np_dtype(trt, engine.get_tensor_dtype(in_name)))
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError("ICudaEngine.create_execution_context returned None (out of memory?)")
    try:
        if not context.set_input_shape(in_name, tuple(x.shape)):
            raise InputError(
                f"batch shape {x.shape} is outside the engine's optimization profile "
                f"({tuple(engine.get_tensor_profile_shape(in_name, 0))} min/opt/max)"
            )
        out_shape = tuple(int(d) for d in context.get_tensor_shape(out_name))
        if any(d < 0 for d in out_shape):
            raise RuntimeError(f"output shape {out_shape} unresolved after set_input_shape")
        out_dtype = _np_dtype(trt, engine.get_tensor_dtype(out_name))
        with (
            Stream() as stream,
            PinnedBuffer(x.shape, x.dtype) as h_in,
            PinnedBuffer(out_shape, out_dtype) as h_out,
            DeviceBuffer(x.nbytes) as d_in,
            DeviceBuffer(h_out.nbytes) as d_out,
        ):
            try:
                h_in.array[...] = x
                memcpy_htod_async(d_in, h_in, stream)
                if not context.set_tensor_address(in_name, d_in.ptr):
                    raise RuntimeError(f"set_tensor_address({in_name!r}) failed")
                if not context.set_tensor_address(out_name, d_out.ptr):
                    raise RuntimeError(f"set_tensor_address({out_name!r}) failed")
                if not context.execute_async_v3(stream.handle):
                    raise RuntimeError("IExecutionContext.execute_async_v3 failed (see the log)")
                memcpy_dtoh_async(h_out, d_out, stream)
                stream.synchronize()
            except BaseException:  # never free memory that queued work may still use
                with contextlib.suppress(CudaError):
                    stream.synchronize()
                raise
            return np.array(h_out.array, dtype=np.float32)
    finally:
        del context
