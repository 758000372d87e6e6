"""Fake ``tensorrt`` and cuda-python runtime modules for tests without a GPU.

* :func:`make_fake_runtime`: a stand-in for ``cuda.bindings.runtime`` that keeps "device memory"
  in Python bytearrays and real host allocations for ``cudaMallocHost``, so copies round-trip
  and leaks show up as unfreed pointers (:func:`install_fake_cuda` puts it in ``sys.modules``).
* :func:`make_fake_trt`: a stand-in for ``tensorrt`` mirroring the TensorRT 10/11 Python API
  names of the builder (Builder, create_network, OnnxParser, IBuilderConfig,
  IOptimizationProfile, ITimingCache, IProgressMonitor, Runtime) and of the runtime
  (ICudaEngine I/O tensors and profiles, IExecutionContext with set_input_shape,
  set_tensor_address, execute_async_v3). Every call is recorded in ``trt.state.calls``, so tests
  check what we ask TensorRT to do, not what TensorRT does. A fake engine "runs" on the fake
  cuda runtime's memory: output = nearest-neighbour x``scale`` upsampling of the input, * 2 + 1.
* :func:`fake_machine`: cuda_runtime's device queries answering for one RTX A4000.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
import weakref
from pathlib import Path

import numpy as np

from cyclesr_deploy import cuda_runtime

# --- fake cuda-python runtime ------------------------------------------------------------------


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStream_t:
    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value


OK = cudaError_t.cudaSuccess
MESSAGES = {
    cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
    cudaError_t.cudaErrorNoDevice: b"no CUDA-capable device is detected",
}


def make_fake_runtime(name: str = "cuda.bindings.runtime") -> types.ModuleType:
    rt = types.ModuleType(name)
    rt.cudaError_t = cudaError_t
    rt.cudaMemcpyKind = cudaMemcpyKind
    rt.cudaStream_t = cudaStream_t
    rt.cudaStreamNonBlocking = 1
    rt.device: dict[int, bytearray] = {}
    rt.host: dict[int, ctypes.Array] = {}
    rt.streams: dict[int, int] = {}  # handle -> flags
    rt.log: list[tuple] = []
    rt.fail: dict[str, cudaError_t] = {}
    rt.next_ptr = 0x7000_0000
    rt.device_count = 1

    def call(fname, *results):
        rt.log.append((fname,))
        if fname in rt.fail:
            return (rt.fail[fname], *([None] * len(results)))
        return (OK, *results)

    def cudaMalloc(n):
        if "cudaMalloc" in rt.fail:
            return call("cudaMalloc", None)
        ptr = rt.next_ptr
        rt.next_ptr += (n + 0xFFFF) & ~0xFFFF
        rt.device[ptr] = bytearray(n)
        return call("cudaMalloc", ptr)

    def cudaFree(ptr):
        del rt.device[ptr]
        return call("cudaFree")

    def cudaMallocHost(n):
        buf = ctypes.create_string_buffer(n)
        rt.host[ctypes.addressof(buf)] = buf
        return call("cudaMallocHost", ctypes.addressof(buf))

    def cudaFreeHost(ptr):
        del rt.host[ptr]
        return call("cudaFreeHost")

    def cudaStreamCreateWithFlags(flags):
        handle = rt.next_ptr
        rt.next_ptr += 0x10
        rt.streams[handle] = flags
        return call("cudaStreamCreateWithFlags", cudaStream_t(handle))

    def cudaStreamSynchronize(stream):
        assert int(stream) in rt.streams
        return call("cudaStreamSynchronize")

    def cudaStreamDestroy(stream):
        del rt.streams[int(stream)]
        return call("cudaStreamDestroy")

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        rt.log.append(("cudaMemcpyAsync", int(kind), int(stream)))
        assert int(stream) == 0 or int(stream) in rt.streams
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            rt.device[dst][:count] = ctypes.string_at(src, count)
        else:
            ctypes.memmove(dst, bytes(rt.device[src][:count]), count)
        return (rt.fail.get("cudaMemcpyAsync", OK),)

    def cudaGetErrorString(err):
        return (OK, MESSAGES.get(err, b"unknown error"))

    def cudaGetDeviceCount():
        if rt.device_count == 0:
            return (cudaError_t.cudaErrorNoDevice, None)
        return call("cudaGetDeviceCount", rt.device_count)

    def cudaSetDevice(index):
        return call("cudaSetDevice")

    def cudaGetDeviceProperties(index):
        prop = types.SimpleNamespace(
            name=b"NVIDIA RTX A4000\x00\x00junk", major=8, minor=6, totalGlobalMem=16 << 30
        )
        return call("cudaGetDeviceProperties", prop)

    def cudaDriverGetVersion():
        return call("cudaDriverGetVersion", 13000)

    def cudaRuntimeGetVersion():
        return call("cudaRuntimeGetVersion", 12090)

    for fn in list(locals().values()):
        if callable(fn) and getattr(fn, "__name__", "").startswith("cuda"):
            setattr(rt, fn.__name__, fn)
    return rt


# --- fake tensorrt -----------------------------------------------------------------------------


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class HardwareCompatibilityLevel(enum.IntEnum):
    NONE = 0
    AMPERE_PLUS = 1
    SAME_COMPUTE_CAPABILITY = 2


def make_fake_trt(version: str) -> types.ModuleType:
    """A ``tensorrt`` stand-in. Fake ONNX files are text: ``fp16``/``fp32`` picks the layer
    types, ``BAD`` makes the parser fail, ``static`` fixes the input shape to 1x1x64x64,
    ``name=x`` renames the input. ``frozen-stats L=n``: the statistics graph (one frame ->
    ``stats`` (n,): mean and variance of the frame alternating); ``frozen-tile L=n``: the tile
    graph (``input`` + static ``stats`` (n,) -> ``input * 2 + 1 + sum(stats)``); ``weights=k``
    (statistics graph): a static ``weights`` (k,) input too, the output scaled by its first
    value (1 for a whole frame), so a missing upload shows."""
    import importlib.machinery

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # for importlib.util.find_spec
    trt.__version__ = version
    major = int(version.split(".")[0])
    st = types.SimpleNamespace(
        calls=[],
        builders=0,
        build_fails=False,
        execute_fails=False,
        deserialized=[],
        loaded_caches=[],
        monitor=None,
        contexts=weakref.WeakSet(),  # live execution contexts
    )
    trt.state = st
    trt.DataType = DataType
    trt.TensorIOMode = TensorIOMode
    trt.MemoryPoolType = MemoryPoolType
    trt.HardwareCompatibilityLevel = HardwareCompatibilityLevel
    if major >= 11:  # TRT 11: STRONGLY_TYPED deprecated/ignored, no FP16/BF16/INT8 flags
        trt.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag",
            {"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2},
        )
        trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"DEBUG": 1, "TF32": 7, "REFIT": 8})
    else:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        )
        trt.BuilderFlag = enum.IntEnum(
            "BuilderFlag", {"FP16": 0, "BF16": 1, "INT8": 2, "TF32": 7, "REFIT": 8}
        )

    class ILogger:
        Severity = Severity

        def __init__(self):
            pass

    class Logger(ILogger):
        WARNING = Severity.WARNING

        def __init__(self, min_severity=Severity.WARNING):
            super().__init__()

        def log(self, severity, msg):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    class Tensor:
        def __init__(self, name, shape=(), dtype=DataType.FLOAT):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Layer:
        def __init__(self, dtype):
            self.num_outputs = 1
            self._out = Tensor("t", dtype=dtype)

        def get_output(self, i):
            return self._out

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.layers, self.outputs = [], [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_layer(self, i):
            return self.layers[i]

        def get_output(self, i):
            return self.outputs[i]

    class ParserError:
        def __init__(self, desc, node, name, op):
            self._d, self._n, self._name, self._op = desc, node, name, op

        def desc(self):
            return self._d

        def node(self):
            return self._n

        def node_name(self):
            return self._name

        def node_operator(self):
            return self._op

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            st.calls.append(("parse_from_file", path))
            text = Path(path).read_text(encoding="utf-8")
            if "BAD" in text:
                self.errors = [
                    ParserError("No importer registered for op: FancyOp", 7, "fancy_7", "FancyOp")
                ]
                return False
            name = text.split("name=")[1].split()[0] if "name=" in text else "input"
            channels = int(text.split("c=")[1].split()[0]) if "c=" in text else 1
            shape = (1, channels, 64, 64) if "static" in text else (-1, channels, -1, -1)
            self.network.scale = int(text.split("scale=")[1].split()[0]) if "scale=" in text else 1
            self.network.inputs = [Tensor(name, shape)]
            self.network.kind, self.network.length = "generator", 0
            if "frozen-" in text:
                n = int(text.split("L=")[1].split()[0])
                self.network.kind, self.network.length = text.split("frozen-")[1].split()[0], n
                if self.network.kind == "stats":
                    self.network.inputs = [Tensor(name, (1, channels, -1, -1))]
                    if "weights=" in text:
                        k = int(text.split("weights=")[1].split()[0])
                        self.network.inputs.append(Tensor("weights", (k,)))
                        self.network.weights = k
                else:
                    self.network.inputs.append(Tensor("stats", (n,)))
            dtypes = [DataType.FLOAT, DataType.HALF, DataType.FLOAT]
            if "fp16" not in text:
                dtypes = [DataType.FLOAT] * 3
            self.network.layers = [Layer(d) for d in dtypes]
            self.network.outputs = [Tensor("output", shape)]
            if self.network.kind == "stats":
                self.network.outputs = [Tensor("stats", (self.network.length,))]
            return True

    class TimingCache:
        def __init__(self, data):
            self.entries = [e for e in bytes(data).decode().split(";") if e]

        def serialize(self):
            return ";".join(self.entries).encode()

        def combine(self, other, ignore_mismatch):
            st.calls.append(("combine", tuple(other.entries), ignore_mismatch))
            self.entries += [e for e in other.entries if e not in self.entries]
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class BuilderConfig:
        def __init__(self):
            self.pools, self.flags, self.profiles = {}, [], []
            self.builder_optimization_level = 3
            self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
            self.progress_monitor = None
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            if bytes(data) == b"CORRUPT":
                raise RuntimeError("invalid timing cache")
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            st.calls.append(("set_timing_cache", tuple(cache.entries), ignore_mismatch))
            if any(e.startswith("othergpu") for e in cache.entries):
                return False
            st.loaded_caches.append(tuple(cache.entries))
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            st.builders += 1
            self.logger = logger

        def create_network(self, flags=0):
            st.calls.append(("create_network", flags))
            st.network = Network(flags)
            return st.network

        def create_builder_config(self):
            st.config = BuilderConfig()
            return st.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            st.calls.append(("build_serialized_network",))
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                for step in range(2):
                    if not monitor.step_complete("Building engine", step):
                        monitor.phase_finish("Building engine")
                        return None
                monitor.phase_finish("Building engine")
            if st.build_fails:
                self.logger.log(Severity.ERROR, "Insufficient workspace for tactic X")
                return None
            if config.cache is not None:
                config.cache.entries.append(f"tactic{len(config.cache.entries)}")
            summary = {
                "flags": network.flags,
                "profiles": [p.shapes for p in config.profiles],
                "opt": config.builder_optimization_level,
                "scale": getattr(network, "scale", 1),
                "kind": getattr(network, "kind", "generator"),
                "length": getattr(network, "length", 0),
                "weights": getattr(network, "weights", 0),
            }
            return b"PLAN" + json.dumps(summary, sort_keys=True).encode()

    class ExecutionContext:
        """IExecutionContext: shapes and addresses set on it; ``execute_async_v3`` computes
        nearest x``scale`` upsampling * 2 + 1 from the input's fake device memory."""

        def __init__(self, engine):
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name, shape):
            shape = tuple(int(d) for d in shape)
            st.calls.append(("set_input_shape", name, shape))
            lo, _, hi = self.engine.profiles[0]
            ok = (
                name == self.engine.input_name
                and len(shape) == 4
                and all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True))
            )
            if ok:
                self.shapes[name] = shape
            return ok

        def get_tensor_shape(self, name):
            n, c, h, w = self.shapes.get(self.engine.input_name, (-1, 1, -1, -1))
            if name == self.engine.input_name:
                return (n, c, h, w)
            if name == "stats":
                return (self.engine.length,)
            if name == "weights":
                return (self.engine.weights,)
            s = self.engine.scale
            return (n, c, h * s, w * s) if n > 0 else (-1, c, -1, -1)

        def set_tensor_address(self, name, ptr):
            st.calls.append(("set_tensor_address", name, int(ptr)))
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            st.calls.append(("execute_async_v3", int(stream_handle)))
            if st.execute_fails:
                return False
            rt = cuda_runtime.runtime_module()
            shape = self.shapes[self.engine.input_name]
            count = int(np.prod(shape))
            src = rt.device[self.addresses[self.engine.input_name]]
            x = np.frombuffer(bytes(src[: 4 * count]), dtype=np.float32).reshape(shape)
            s = self.engine.scale
            y = (x.repeat(s, axis=2).repeat(s, axis=3) * 2 + 1).astype(np.float32)
            if self.engine.kind == "stats":
                y = np.full(self.engine.length, x.mean(), dtype=np.float32)
                y[1::2] = x.var()
                if self.engine.weights:
                    raw = rt.device[self.addresses["weights"]]
                    y = y * np.frombuffer(bytes(raw[:4]), dtype=np.float32)[0]
            elif self.engine.kind == "tile":
                raw = rt.device[self.addresses["stats"]]
                stats = np.frombuffer(bytes(raw[: 4 * self.engine.length]), dtype=np.float32)
                y = (y + stats.sum()).astype(np.float32)
            dst = rt.device[self.addresses[self.engine.output_name]]
            dst[: y.nbytes] = y.tobytes()
            return True

    class Engine:
        """ICudaEngine of a fake plan: one input/output, the plan's profiles and scale."""

        def __init__(self, data):
            self.data = data
            try:
                summary = json.loads(bytes(data)[4:])
            except ValueError:
                summary = {}
            profiles = summary.get("profiles") or [{"input": [[1, 1, 64, 64]] * 3}]
            self.input_name = next(iter(profiles[0]))
            self.output_name = "output"
            self.profiles = [
                tuple(tuple(int(d) for d in s) for s in p[self.input_name]) for p in profiles
            ]
            self.scale = int(summary.get("scale", 1))
            self.io_dtype = DataType.FLOAT
            self.kind, self.length = summary.get("kind", "generator"), summary.get("length", 0)
            self.weights = int(summary.get("weights", 0))
            self.names = [self.input_name, self.output_name]
            if self.kind == "stats":
                self.output_name = self.names[1] = "stats"
                if self.weights:
                    self.names.insert(1, "weights")
            elif self.kind == "tile":
                self.names.insert(1, "stats")

        num_io_tensors = property(lambda self: len(self.names))
        num_optimization_profiles = property(lambda self: len(self.profiles))

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_mode(self, name):
            out = name == self.output_name
            return TensorIOMode.OUTPUT if out else TensorIOMode.INPUT

        def get_tensor_shape(self, name):
            if name == "weights":
                assert self.kind == "stats" and self.weights, name
                return (self.weights,)
            assert name == "stats" and self.kind == "tile", name  # static inputs only
            return (self.length,)

        def get_tensor_dtype(self, name):
            return self.io_dtype

        def get_tensor_profile_shape(self, name, profile_index):
            assert name == self.input_name
            return [list(s) for s in self.profiles[profile_index]]

        def create_execution_context(self):
            st.calls.append(("create_execution_context",))
            context = ExecutionContext(self)
            st.contexts.add(context)
            return context

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            st.deserialized.append(bytes(data))
            if not bytes(data).startswith(b"PLAN"):
                self.logger.log(Severity.ERROR, "Serialization assertion magicTag failed")
                return None
            return Engine(bytes(data))

    trt.ILogger, trt.Logger, trt.IProgressMonitor = ILogger, Logger, IProgressMonitor
    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


# --- installers -------------------------------------------------------------------------------

GPU = cuda_runtime.DeviceInfo(0, "NVIDIA RTX A4000", "8.6", 16 << 30)


def install_fake_cuda(monkeypatch) -> types.ModuleType:
    """Put a fresh fake runtime in ``sys.modules`` under the cuda-python 12.6+/13.x layout
    (``cuda.bindings.runtime``); NVML absent. Returns the runtime."""
    runtime = make_fake_runtime()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, runtime
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvml", None)
    return runtime


def install_fake_trt(monkeypatch, version: str) -> types.ModuleType:
    """Put a fresh fake ``tensorrt`` of ``version`` in ``sys.modules`` (and reset the
    process-wide TensorRT logger). Returns the module."""
    from cyclesr_deploy.engines import tensorrt_load

    trt = make_fake_trt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_load, "_LOGGER", None)
    return trt


def fake_machine(monkeypatch) -> types.SimpleNamespace:
    """cuda_runtime's device queries answer for ``state.gpu`` (an RTX A4000 unless a test
    changes it) with driver ``state.driver``; ``set_device`` calls land in
    ``state.devices_set``."""
    state = types.SimpleNamespace(gpu=GPU, driver="580.65.06", devices_set=[])
    monkeypatch.setattr(cuda_runtime, "device_properties", lambda index=0: state.gpu)
    monkeypatch.setattr(cuda_runtime, "nvidia_driver_version", lambda: state.driver)
    monkeypatch.setattr(cuda_runtime, "driver_version", lambda: "13.0")
    monkeypatch.setattr(cuda_runtime, "runtime_version", lambda: "12.9")
    monkeypatch.setattr(cuda_runtime, "set_device", lambda index=0: state.devices_set.append(index))
    return state


# --- fake onnxruntime -------------------------------------------------------------------------


def analytic_generator(x: np.ndarray, scale: int) -> np.ndarray:
    """What the fake backends compute: nearest-neighbour x``scale`` upsampling, * 2 + 1."""
    return (x.repeat(scale, axis=2).repeat(scale, axis=3) * 2 + 1).astype(np.float32)


def make_fake_ort(
    available: list[str], *, working: list[str] | None = None, scale: int = 1
) -> types.ModuleType:
    """An ``onnxruntime`` stand-in listing ``available`` providers, of which only ``working``
    (default: CPU) really start, like onnxruntime-gpu on a machine without CUDA; a session
    computes :func:`analytic_generator`. ``ort.state`` records sessions, bindings and copies;
    ``state.raise_on_gpu`` makes a GPU session raise instead of falling back (ORT#21424);
    ``state.metadata`` is the model's ``custom_metadata_map``."""
    import importlib.machinery

    ort = types.ModuleType("onnxruntime")
    ort.__spec__ = importlib.machinery.ModuleSpec("onnxruntime", None)
    st = types.SimpleNamespace(
        sessions=[],
        working=list(working or ["CPUExecutionProvider"]),
        raise_on_gpu=False,
        metadata={},
        ortvalues=[],
        updates=0,
        syncs=0,
        runs=0,
    )
    ort.state = st
    ort.get_available_providers = lambda: list(available)
    ort.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99, ORT_DISABLE_ALL=0)
    ort.ExecutionMode = types.SimpleNamespace(ORT_SEQUENTIAL=0, ORT_PARALLEL=1)

    class SessionOptions:
        intra_op_num_threads = 0
        inter_op_num_threads = 0

    class OrtValue:
        def __init__(self, shape, device):
            self.array = np.zeros(shape, dtype=np.float32)
            self.device = device

        @staticmethod
        def ortvalue_from_shape_and_type(shape, element_type, device_type="cpu", device_id=0):
            value = OrtValue(tuple(shape), device_type)
            st.ortvalues.append((tuple(shape), device_type, device_id))
            return value

        def update_inplace(self, data):
            st.updates += 1
            np.copyto(self.array, data)

    class IOBinding:
        def __init__(self):
            self.x = None
            self.out = None

        def bind_ortvalue_input(self, name, value):
            assert name == "input"
            self.x = value

        def bind_output(self, name, device_type, device_id, element_type, shape, buffer_ptr):
            assert name == "output" and device_type == "cpu"
            raw = (ctypes.c_float * int(np.prod(shape))).from_address(buffer_ptr)
            self.out = np.ctypeslib.as_array(raw).reshape(shape)

        def synchronize_outputs(self):
            st.syncs += 1

    class InferenceSession:
        def __init__(self, path, sess_options=None, providers=None):
            names = [p if isinstance(p, str) else p[0] for p in providers]
            self.path, self.options, self.requested = path, sess_options, list(providers)
            st.sessions.append(self)
            gpu = [n for n in names if n != "CPUExecutionProvider"]
            if st.raise_on_gpu and any(n not in st.working for n in gpu):
                raise RuntimeError("CUDA_PATH is set but CUDA wasn't able to be loaded")
            self.providers = [n for n in names if n in st.working] or ["CPUExecutionProvider"]

        def get_providers(self):
            return list(self.providers)

        def get_inputs(self):
            return [types.SimpleNamespace(name="input")]

        def get_outputs(self):
            return [types.SimpleNamespace(name="output")]

        def get_modelmeta(self):
            return types.SimpleNamespace(custom_metadata_map=dict(st.metadata))

        def run(self, output_names, feed):
            st.runs += 1
            return [analytic_generator(feed["input"], scale)]

        def io_binding(self):
            return IOBinding()

        def run_with_iobinding(self, io):
            st.runs += 1
            io.out[...] = analytic_generator(io.x.array, scale)

    ort.SessionOptions, ort.OrtValue, ort.InferenceSession = (
        SessionOptions,
        OrtValue,
        InferenceSession,
    )
    return ort


def install_fake_ort(monkeypatch, available: list[str], **kw) -> types.ModuleType:
    """Put :func:`make_fake_ort` in ``sys.modules['onnxruntime']``; returns it."""
    ort = make_fake_ort(available, **kw)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    return ort
