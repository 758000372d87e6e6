"""cuda_runtime against a FAKE cuda-python runtime module (no GPU, no cuda-python needed).

The fake (``tests/fakes.py``) keeps "device memory" in Python bytearrays and real host
allocations for ``cudaMallocHost``, so copies round-trip and leaks show up as unfreed pointers.
"""

from __future__ import annotations

import ctypes
import enum
import gc
import sys
import types

import numpy as np
import pytest

from cyclesr_deploy import cuda_runtime as cr
from cyclesr_deploy.errors import InputError, MissingExtraError
from tests.fakes import (
    OK,
    cudaError_t,
    install_fake_cuda,
    make_fake_runtime,
)


@pytest.fixture
def rt(monkeypatch):
    """Install the fake under the cuda-python 12.6+/13.x layout (``cuda.bindings.runtime``)."""
    runtime = install_fake_cuda(monkeypatch)
    yield runtime
    gc.collect()
    assert runtime.device == {} and runtime.host == {} and runtime.streams == {}, "leak"


# --- module layout ----------------------------------------------------------------------------


def test_prefers_cuda_bindings_runtime(rt):
    assert cr.runtime_module() is rt


def test_falls_back_to_legacy_cudart(monkeypatch):
    legacy = make_fake_runtime("cuda.cudart")
    cuda = types.ModuleType("cuda")
    cuda.cudart = legacy
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # cuda-python < 12.6
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", legacy)
    assert cr.runtime_module() is legacy
    with cr.DeviceBuffer(16) as buf:
        assert buf.ptr in legacy.device


def test_missing_cuda_python_names_the_extra(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"cuda-python.*cyclesr-deploy\[tensorrt\]"):
        cr.runtime_module()
    assert cr.cuda_available() is False


# --- check ------------------------------------------------------------------------------------


def test_check_unwraps_results(rt):
    assert cr.check((OK,)) is None
    assert cr.check((OK, 5)) == 5
    assert cr.check((OK, 1, 2)) == (1, 2)
    assert cr.check(OK) is None


def test_check_raises_with_name_message_and_call(rt):
    with pytest.raises(cr.CudaError) as info:
        cr.check((cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")
    err = info.value
    assert err.code == 2 and err.name == "cudaErrorMemoryAllocation"
    assert str(err) == "cudaMalloc: cudaErrorMemoryAllocation (2): out of memory"


# --- device facts -----------------------------------------------------------------------------


def test_device_facts(rt):
    info = cr.device_properties(0)
    assert info == cr.DeviceInfo(0, "NVIDIA RTX A4000", "8.6", 16 << 30)
    assert cr.driver_version() == "13.0"
    assert cr.runtime_version() == "12.9"
    assert cr.device_count() == 1 and cr.cuda_available()
    cr.set_device(0)
    assert ("cudaSetDevice",) in rt.log
    assert cr.nvidia_driver_version() is None  # no NVML in this fake


def test_no_device(rt):
    rt.device_count = 0
    assert cr.cuda_available() is False
    with pytest.raises(cr.CudaError, match="no CUDA-capable device"):
        cr.device_count()


def test_nvidia_driver_version_from_nvml(rt, monkeypatch):
    nvml = types.ModuleType("cuda.bindings.nvml")
    seen = []
    nvml.init_v2 = lambda: seen.append("init")
    nvml.system_get_driver_version = lambda: "580.65.06"
    nvml.shutdown = lambda: seen.append("shutdown")
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvml", nvml)
    assert cr.nvidia_driver_version() == "580.65.06"
    assert seen == ["init", "shutdown"]

    def no_driver():
        raise RuntimeError("nvml is an NVIDIA driver library and can only be found ...")

    nvml.init_v2 = no_driver
    assert cr.nvidia_driver_version() is None


# --- buffers and streams ----------------------------------------------------------------------


def test_device_buffer_freed_on_exit_once(rt):
    with cr.DeviceBuffer(1000) as buf:
        assert buf.ptr in rt.device and len(rt.device[buf.ptr]) == 1000
        assert "closed" not in repr(buf)
    assert buf.closed and rt.device == {}
    buf.close()  # idempotent
    assert [c for c in rt.log if c[0] == "cudaFree"] == [("cudaFree",)]


def test_device_buffer_freed_when_collected(rt):
    buf = cr.DeviceBuffer(64)
    ptr = buf.ptr
    del buf
    gc.collect()
    assert ptr not in rt.device


def test_device_buffer_errors(rt):
    with pytest.raises(InputError):
        cr.DeviceBuffer(0)
    rt.fail["cudaMalloc"] = cudaError_t.cudaErrorMemoryAllocation
    with pytest.raises(cr.CudaError, match="cudaMalloc: cudaErrorMemoryAllocation"):
        cr.DeviceBuffer(1 << 40)
    assert [c for c in rt.log if c[0] == "cudaFree"] == []  # nothing to free


def test_pinned_buffer_numpy_view(rt):
    with cr.PinnedBuffer((2, 3), np.float16) as pinned:
        arr = pinned.array
        assert arr.shape == (2, 3) and arr.dtype == np.float16 and pinned.nbytes == 12
        arr[...] = 1.5
        raw = ctypes.string_at(pinned.ptr, pinned.nbytes)
        assert np.frombuffer(raw, np.float16).tolist() == [1.5] * 6
    assert pinned.closed and rt.host == {}
    with pytest.raises(ValueError, match="closed"):
        _ = pinned.array
    with pytest.raises(InputError):
        cr.PinnedBuffer((0, 4))
    assert cr.PinnedBuffer(5, np.uint16).array.shape == (5,)


def test_stream_non_blocking_synchronize_destroy(rt):
    with cr.Stream() as stream:
        assert rt.streams == {stream.handle: 1}  # cudaStreamNonBlocking
        stream.synchronize()
    assert stream.closed and rt.streams == {}
    names = [c[0] for c in rt.log]
    assert names == ["cudaStreamCreateWithFlags", "cudaStreamSynchronize", "cudaStreamDestroy"]


def test_copies_round_trip(rt):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with (
        cr.Stream() as stream,
        cr.DeviceBuffer(data.nbytes) as dev,
        cr.PinnedBuffer(data.shape, data.dtype) as pinned,
    ):
        cr.memcpy_htod_async(dev, data, stream)
        cr.memcpy_dtoh_async(pinned, dev, stream)
        stream.synchronize()
        np.testing.assert_array_equal(pinned.array, data)
        out = np.empty_like(data)
        cr.memcpy_dtoh_async(out, dev.ptr, stream.handle)  # raw ints work too
        np.testing.assert_array_equal(out, data)
    kinds = [c[1:] for c in rt.log if c[0] == "cudaMemcpyAsync"]
    assert kinds[0] == (1, stream.handle) and kinds[1] == (2, stream.handle)


def test_copy_argument_errors(rt):
    with cr.DeviceBuffer(16) as dev:
        with pytest.raises(InputError, match="does not fit"):
            cr.memcpy_htod_async(dev, np.zeros(8, np.float32), None)
        with pytest.raises(InputError, match="C-contiguous"):
            cr.memcpy_htod_async(dev, np.zeros((4, 4), np.float32)[:, 0], None)
        frozen = np.zeros(4, np.float32)
        frozen.flags.writeable = False
        with pytest.raises(InputError, match="read-only"):
            cr.memcpy_dtoh_async(frozen, dev, None)
    with pytest.raises(ValueError, match="closed"):
        cr.memcpy_htod_async(dev, np.zeros(2, np.float32), None)


def test_failed_copy_raises(rt):
    rt.fail["cudaMemcpyAsync"] = cudaError_t.cudaErrorInvalidValue
    with cr.DeviceBuffer(16) as dev, pytest.raises(cr.CudaError, match="HtoD"):
        cr.memcpy_htod_async(dev, np.zeros(4, np.float32), 0)


# --- infer_once against a fake engine ---------------------------------------------------------


class TensorIOMode(enum.IntEnum):
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1


def fake_trt(monkeypatch) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35"
    trt.TensorIOMode, trt.DataType = TensorIOMode, DataType
    trt.nptype = lambda dt: {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[dt]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


class FakeContext:
    """Doubles the input and upsamples x2 (a 'scale 2' generator), through device memory."""

    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.calls = engine, {}, {}, []

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, shape))
        if shape[2] > 64:  # outside the profile
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        n, c, h, w = self.shapes["input"]
        return (n, c, 2 * h, 2 * w)

    def set_tensor_address(self, name, ptr):
        self.calls.append(("set_tensor_address", name, ptr))
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        self.calls.append(("execute_async_v3", stream))
        if self.engine.fail:
            return False
        rt = self.engine.rt
        shape = self.shapes["input"]
        x = np.frombuffer(bytes(rt.device[self.addresses["input"]]), np.float32).reshape(shape)
        y = (2 * x).repeat(2, axis=2).repeat(2, axis=3).astype(self.engine.out_dtype)
        rt.device[self.addresses["output"]][: y.nbytes] = y.tobytes()
        return True


class FakeEngine:
    def __init__(self, rt, out_dtype=np.float32, outputs=("output",), fail=False):
        self.rt, self.out_dtype, self.fail = rt, out_dtype, fail
        self.names = ["input", *outputs]
        self.contexts = []

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        if name == "input" or self.out_dtype == np.float32:
            return DataType.FLOAT
        return DataType.HALF

    def get_tensor_profile_shape(self, name, index):
        return [(1, 1, 4, 4), (2, 1, 64, 64), (2, 1, 64, 64)]

    def create_execution_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
def test_infer_once(rt, monkeypatch, out_dtype):
    fake_trt(monkeypatch)
    engine = FakeEngine(rt, out_dtype=out_dtype)
    x = np.linspace(-1, 1, 2 * 16 * 12, dtype=np.float64).reshape(2, 1, 16, 12)
    y = cr.infer_once(engine, x)
    assert y.dtype == np.float32 and y.shape == (2, 1, 32, 24)
    np.testing.assert_allclose(y, (2 * x).repeat(2, 2).repeat(2, 3), atol=2e-3)
    (ctx,) = engine.contexts
    names = [c[0] for c in ctx.calls]
    assert names == [
        "set_input_shape",
        "set_tensor_address",
        "set_tensor_address",
        "execute_async_v3",
    ]
    assert ctx.calls[0] == ("set_input_shape", "input", (2, 1, 16, 12))
    assert ctx.calls[3][1] != 0  # a real (non-default) stream


def test_infer_once_errors_free_everything(rt, monkeypatch):
    fake_trt(monkeypatch)
    with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
        cr.infer_once(FakeEngine(rt, fail=True), np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="outside the engine's optimization profile"):
        cr.infer_once(FakeEngine(rt), np.zeros((1, 1, 128, 128), np.float32))
    with pytest.raises(InputError, match="one input and one output"):
        cr.infer_once(FakeEngine(rt, outputs=("a", "b")), np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        cr.infer_once(FakeEngine(rt), np.zeros((8, 8), np.float32))
    with pytest.raises(InputError, match="not 'x'"):
        cr.infer_once(FakeEngine(rt), np.zeros((1, 1, 8, 8), np.float32), input_name="x")
    # the rt fixture asserts that no device/host memory or stream is left behind
