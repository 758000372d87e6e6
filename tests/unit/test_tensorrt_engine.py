"""TensorRTEngine against a FAKE ``tensorrt`` and a FAKE cuda-python runtime (no GPU).

Engines are "built" by the real ``engine_from_onnx`` on the fake TensorRT into a model folder
(plan + sidecar), then run by :class:`TensorRTEngine` on the fake runtime, whose "device" is
Python memory; the fake engine computes nearest x``scale`` upsampling * 2 + 1 (tests/fakes.py).
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from cyclesr_deploy import cuda_runtime
from cyclesr_deploy.engines import Engine, TensorRTEngine, check_batch_shape
from cyclesr_deploy.engines.trt_config import EngineMismatchError, TensorRTBuildConfig
from cyclesr_deploy.errors import InputError, MissingExtraError
from cyclesr_deploy.export import tensorrt_build as tb
from cyclesr_deploy.model import (
    ONNX_FILES,
    ONNX_FP16,
    GeneratorConfig,
    ModelConfig,
    save_model_config,
)
from tests.fakes import (
    analytic_generator,
    cudaMemcpyKind,
    fake_machine,
    install_fake_cuda,
    install_fake_trt,
)

HTOD, DTOH = int(cudaMemcpyKind.cudaMemcpyHostToDevice), int(cudaMemcpyKind.cudaMemcpyDeviceToHost)


@pytest.fixture
def machine(monkeypatch):
    return fake_machine(monkeypatch)


@pytest.fixture
def rt(monkeypatch):
    runtime = install_fake_cuda(monkeypatch)
    yield runtime
    gc.collect()
    assert runtime.device == {} and runtime.host == {} and runtime.streams == {}, "leak"


@pytest.fixture(params=["10.13.0.35", "11.0.0"])
def trt(request, monkeypatch, machine, rt):
    trt = install_fake_trt(monkeypatch, request.param)
    # one event log for TensorRT calls and CUDA copies/synchronizations, to check their order
    copy, sync = rt.cudaMemcpyAsync, rt.cudaStreamSynchronize

    def logged_copy(dst, src, count, kind, stream):
        trt.state.calls.append(("memcpy", int(kind), int(stream), count))
        return copy(dst, src, count, kind, stream)

    def logged_sync(stream):
        trt.state.calls.append(("synchronize", int(stream)))
        return sync(stream)

    rt.cudaMemcpyAsync, rt.cudaStreamSynchronize = logged_copy, logged_sync
    return trt


def model_folder(tmp_path, scale: int = 1):
    folder = tmp_path / f"model-x{scale}"
    save_model_config(
        folder, ModelConfig(generator=GeneratorConfig(ngf=8, n_blocks=1, scale=scale))
    )
    for name, kind in ((ONNX_FILES["ab"], "fp32"), (ONNX_FP16, "fp16")):
        (folder / name).write_text(f"fake-onnx {kind} scale={scale}", encoding="utf-8")
    return folder


def build(folder, **kw):
    cfg = TensorRTBuildConfig(timing_cache_dir=None, **{"tile": 64, "batch": 4, **kw})
    return tb.engine_from_onnx(folder, cfg)


def tiles(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def calls(trt, *names):
    return [c for c in trt.state.calls if c[0] in names]


def test_allocates_once_for_the_max_shape_and_runs(trt, rt, tmp_path):
    folder = model_folder(tmp_path, scale=2)
    built = build(folder)  # static 4x1x64x64
    engine = TensorRTEngine(built.engine_path)
    assert isinstance(engine, Engine) and engine.name == "tensorrt[fp16]"
    with engine:
        mallocs = [c for c in rt.log if c[0] in ("cudaMalloc", "cudaMallocHost")]
        assert len(mallocs) == 4
        assert (
            sorted(b.nbytes for b in engine._buffers)
            == [4 * 64 * 64 * 4] * 2 + [4 * 128 * 128 * 4] * 2
        )
        for n in (4, 2, 4, 1):
            x = tiles((n, 1, 64, 64), seed=n)
            y = engine.infer(x)
            assert y.shape == (n, 1, 128, 128) and y.dtype == np.float32
            np.testing.assert_array_equal(y, analytic_generator(x, 2))
        assert len([c for c in rt.log if c[0] in ("cudaMalloc", "cudaMallocHost")]) == 4
        assert len(trt.state.contexts) == 1  # one execution context


def test_call_order_addresses_once_shape_per_change(trt, tmp_path):
    built = build(model_folder(tmp_path))
    with TensorRTEngine(built.engine_path) as engine:
        handle = engine._stream.handle
        d_in, d_out = engine._d_in.ptr, engine._d_out.ptr
        setup = [c for c in trt.state.calls if c[0] != "parse_from_file"]
        trt.state.calls.clear()
        x = tiles((4, 1, 64, 64))
        engine.infer(x)
        engine.infer(x)
    assert ("set_tensor_address", "input", d_in) in setup
    assert ("set_tensor_address", "output", d_out) in setup
    assert setup.index(("create_execution_context",)) < setup.index(
        ("set_tensor_address", "input", d_in)
    )
    one_call = [
        ("set_input_shape", "input", (4, 1, 64, 64)),
        ("memcpy", HTOD, handle, x.nbytes),
        ("execute_async_v3", handle),
        ("memcpy", DTOH, handle, x.nbytes),
        ("synchronize", handle),
    ]
    assert trt.state.calls[:5] == one_call
    assert trt.state.calls[5:10] == [*one_call[1:], ("synchronize", handle)]  # + close()
    assert handle != 0  # never the default stream
    assert not calls(trt, "set_tensor_address")  # addresses were set once, at open


def test_stream_is_non_blocking_and_not_default(trt, rt, tmp_path):
    built = build(model_folder(tmp_path))
    with TensorRTEngine(built.engine_path) as engine:
        assert rt.streams[engine._stream.handle] == rt.cudaStreamNonBlocking


def test_returns_a_view_of_the_reused_pinned_output(trt, tmp_path):
    built = build(model_folder(tmp_path))
    with TensorRTEngine(built.engine_path) as engine:
        first = engine.infer(tiles((4, 1, 64, 64), seed=1))
        kept = first.copy()
        second = engine.infer(tiles((4, 1, 64, 64), seed=2))
        assert np.shares_memory(first, engine._h_out.array)
        assert np.shares_memory(first, second)
        assert not np.array_equal(first, kept)  # buffer contract: overwritten by the next call
        np.testing.assert_array_equal(first, second)


def test_small_batch_is_padded_to_the_static_profile(trt, rt, tmp_path):
    built = build(model_folder(tmp_path))
    with TensorRTEngine(built.engine_path) as engine:
        engine.infer(tiles((4, 1, 64, 64), seed=3))  # fills all 4 rows of the pinned input
        x = tiles((3, 1, 64, 64), seed=4)
        y = engine.infer(x)
        assert y.shape == (3, 1, 64, 64)
        np.testing.assert_array_equal(y, analytic_generator(x, 1))
        assert calls(trt, "set_input_shape")[-1] == ("set_input_shape", "input", (4, 1, 64, 64))
        np.testing.assert_array_equal(engine._views[0][3], 0)  # padding row zeroed


def test_dynamic_profile_spec_and_shapes(trt, tmp_path):
    built = build(model_folder(tmp_path), dynamic=True, batch=2, min_tile=32, max_tile=128)
    engine = TensorRTEngine(built.engine_path)
    before = engine.input_spec
    assert before.shape == (None, 1, None, None)
    assert (before.max_batch, before.max_tile, before.min_tile) == (2, (128, 128), (32, 32))
    with engine:
        assert engine.input_spec == before  # the engine's profile agrees with the sidecar
        for shape in [(1, 1, 32, 32), (2, 1, 128, 96), (2, 1, 128, 96)]:
            x = tiles(shape)
            np.testing.assert_array_equal(engine.infer(x), analytic_generator(x, 1))
    shapes = [c[2] for c in calls(trt, "set_input_shape")]
    assert shapes == [(2, 1, 128, 128), (1, 1, 32, 32), (2, 1, 128, 96)]  # max, then changes


def test_static_spec_fixes_the_tile(trt, tmp_path):
    built = build(model_folder(tmp_path))
    spec = TensorRTEngine(built.engine_path).input_spec
    assert spec.shape == (None, 1, 64, 64) and spec.max_batch == 4
    check_batch_shape(spec, (3, 1, 64, 64))
    with pytest.raises(InputError, match="at most 4"):
        check_batch_shape(spec, (5, 1, 64, 64))
    with pytest.raises(InputError, match="exceed this engine's maximum of 64x64"):
        check_batch_shape(spec, (1, 1, 128, 64))
    with pytest.raises(InputError, match="below this engine's minimum"):
        check_batch_shape(spec, (1, 1, 32, 64))


def test_shape_beyond_the_profile_is_an_input_error(trt, tmp_path):
    built = build(model_folder(tmp_path))
    with TensorRTEngine(built.engine_path) as engine:
        with pytest.raises(InputError, match=r"outside the TensorRT engine's profile"):
            engine.infer(tiles((1, 1, 128, 128)))
        x = tiles((4, 1, 64, 64))
        np.testing.assert_array_equal(engine.infer(x), analytic_generator(x, 1))  # still fine


def test_resources_freed_on_exit_and_closed_engine_refuses(trt, rt, tmp_path):
    built = build(model_folder(tmp_path))
    engine = TensorRTEngine(built.engine_path)
    with engine:
        engine.infer(tiles((4, 1, 64, 64)))
        assert rt.device and rt.host and rt.streams
    assert not engine.is_open
    gc.collect()
    assert rt.device == {} and rt.host == {} and rt.streams == {}
    assert len(trt.state.contexts) == 0  # the execution context was released
    with pytest.raises(RuntimeError, match="closed"):
        engine.infer(tiles((4, 1, 64, 64)))
    with engine:  # reopens
        assert engine.infer(tiles((4, 1, 64, 64))).shape == (4, 1, 64, 64)


def test_failed_execute_raises_and_frees(trt, rt, tmp_path):
    built = build(model_folder(tmp_path))
    trt.state.execute_fails = True
    with TensorRTEngine(built.engine_path) as engine, pytest.raises(RuntimeError, match="execute"):
        engine.infer(tiles((4, 1, 64, 64)))


def test_other_thread_sets_the_device_first(trt, machine, tmp_path):
    built = build(model_folder(tmp_path))
    with TensorRTEngine(built.engine_path, device_id=0) as engine:
        machine.devices_set.clear()
        worker = threading.Thread(target=engine.infer, args=(tiles((4, 1, 64, 64)),))
        worker.start()
        worker.join()
        assert machine.devices_set == [0]
        engine.infer(tiles((4, 1, 64, 64)))  # back on the opening thread: set again
        assert machine.devices_set == [0, 0]


def test_model_folder_picks_the_fitting_engine_fp16_first(trt, tmp_path):
    folder = model_folder(tmp_path)
    fp32 = build(folder, precision="fp32")
    fp16 = build(folder, precision="fp16")
    assert TensorRTEngine(folder).engine_path == fp16.engine_path
    assert TensorRTEngine(folder, precision="fp32").engine_path == fp32.engine_path


def test_model_folder_without_fitting_engine_says_how_to_rebuild(trt, machine, tmp_path):
    folder = model_folder(tmp_path)
    with pytest.raises(InputError, match=r"no TensorRT engine in .*cyclesr export tensorrt"):
        TensorRTEngine(folder)
    build(folder, tile=128, batch=2)
    machine.gpu = cuda_runtime.DeviceInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30)
    with pytest.raises(EngineMismatchError) as info:
        TensorRTEngine(folder)
    msg = str(info.value)
    assert "NVIDIA RTX A4000 (sm 8.6)" in msg and "NVIDIA GeForce RTX 4090" in msg
    assert "cyclesr export tensorrt" in msg and "--tile 128 --batch 2" in msg


def test_sidecar_is_checked_on_open(trt, machine, tmp_path):
    built = build(model_folder(tmp_path))
    engine = TensorRTEngine(built.engine_path)
    machine.gpu = cuda_runtime.DeviceInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30)
    with pytest.raises(EngineMismatchError, match="cannot be used here"):
        engine.__enter__()
    assert not engine.is_open
    with TensorRTEngine(built.engine_path, check=False):  # explicit opt-out
        pass


def test_engine_outside_a_model_folder(trt, tmp_path):
    built = build(model_folder(tmp_path))
    stray = tmp_path / "stray.engine"
    stray.write_bytes(built.engine_path.read_bytes())
    with pytest.raises(InputError, match=r"must live in MODEL_DIR/engines"):
        TensorRTEngine(stray)
    with pytest.raises(InputError, match="no such TensorRT engine"):
        TensorRTEngine(tmp_path / "none.engine")


def test_missing_tensorrt_names_the_extra_on_open(trt, monkeypatch, tmp_path):
    built = build(model_folder(tmp_path))
    engine = TensorRTEngine(built.engine_path)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    with pytest.raises(MissingExtraError, match=r"cyclesr-deploy\[tensorrt\]"):
        engine.__enter__()
