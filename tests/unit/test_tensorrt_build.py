"""Engine building and loading against a FAKE ``tensorrt`` module (no TensorRT, no GPU).

The fake (``tests/fakes.py``) mirrors the TensorRT 10/11 Python API names the builder uses
(Builder, create_network, OnnxParser, IBuilderConfig, IOptimizationProfile, ITimingCache,
IProgressMonitor, Runtime) and records every call, so the tests check what we ask TensorRT to do,
not what TensorRT does.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import pytest

from cyclesr_deploy import cuda_runtime
from cyclesr_deploy.engines.trt_config import (
    EngineBuildError,
    EngineMismatchError,
    OnnxParseError,
    TensorRTBuildConfig,
    TensorRTVersionError,
    read_sidecar,
    sha256_file,
)
from cyclesr_deploy.errors import InputError, MissingExtraError
from cyclesr_deploy.export import tensorrt_build as tb
from cyclesr_deploy.model import (
    ENGINES_DIR,
    ONNX_FILES,
    ONNX_FP16,
    GeneratorConfig,
    ModelConfig,
    save_model_config,
)
from tests.fakes import (
    HardwareCompatibilityLevel,
    MemoryPoolType,
    Severity,
    fake_machine,
    install_fake_trt,
)

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def machine(monkeypatch):
    """A fake CUDA device (cuda_runtime's device queries) whose answers tests may change."""
    return fake_machine(monkeypatch)


def install(monkeypatch, version: str):
    return install_fake_trt(monkeypatch, version)


@pytest.fixture(params=["10.13.0.35", "11.0.0"])
def trt(request, monkeypatch, machine):
    return install(monkeypatch, request.param)


@pytest.fixture
def trt10(monkeypatch, machine):
    return install(monkeypatch, "10.13.0.35")


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "my model"
    save_model_config(folder, ModelConfig())
    (folder / ONNX_FILES["ab"]).write_text("fake-onnx fp32", encoding="utf-8")
    (folder / ONNX_FP16).write_text("fake-onnx fp16", encoding="utf-8")
    return folder


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "trt-cache"


def cfg(cache_dir: Path | None, **kw) -> TensorRTBuildConfig:
    return TensorRTBuildConfig(timing_cache_dir=cache_dir, **kw)


def calls(trt, name):
    return [c for c in trt.state.calls if c[0] == name]


# --- flags per version and precision -----------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "precision", "flag_bits", "onnx"),
    [
        ("10.13.0.35", "fp16", 1 << 1, ONNX_FP16),  # STRONGLY_TYPED = 1 on TRT 10
        ("11.0.0", "fp16", 0, ONNX_FP16),  # strongly typed by default on 11
        ("10.13.0.35", "fp32", 0, ONNX_FILES["ab"]),
        ("11.0.0", "fp32", 0, ONNX_FILES["ab"]),
    ],
)
def test_network_flags_and_onnx_per_version(
    monkeypatch, machine, model_dir, cache_dir, version, precision, flag_bits, onnx
):
    trt = install(monkeypatch, version)
    res = tb.engine_from_onnx(model_dir, cfg(cache_dir, precision=precision))
    assert calls(trt, "create_network") == [("create_network", flag_bits)]
    assert calls(trt, "parse_from_file") == [("parse_from_file", str(model_dir / onnx))]
    assert trt.state.config.flags == []  # never BuilderFlag.FP16 (or any weak-typing flag)
    assert res.sidecar.strongly_typed is (precision == "fp16" or version.startswith("11"))
    assert res.sidecar.precision == precision and res.sidecar.onnx_file == onnx


def test_trt11_has_no_fp16_flag_and_build_never_needs_it(monkeypatch, machine, model_dir):
    trt = install(monkeypatch, "11.0.0")
    assert not hasattr(trt.BuilderFlag, "FP16")
    tb.engine_from_onnx(model_dir, cfg(None))  # would raise AttributeError if it asked for FP16


def test_static_profile_workspace_opt_level(trt, model_dir, cache_dir):
    tb.engine_from_onnx(model_dir, cfg(cache_dir))
    config = trt.state.config
    assert config.pools == {MemoryPoolType.WORKSPACE: 4 << 30}
    assert config.builder_optimization_level == 3
    assert config.hardware_compatibility_level == HardwareCompatibilityLevel.NONE
    (profile,) = config.profiles
    shape = (4, 1, 512, 512)
    assert profile.shapes == {"input": (shape, shape, shape)}


def test_dynamic_profile_and_options(trt, model_dir, cache_dir):
    settings = cfg(
        cache_dir,
        dynamic=True,
        tile=256,
        batch=8,
        max_tile=1024,
        opt_level=5,
        workspace_gib=2.5,
        hardware_compat=True,
    )
    res = tb.engine_from_onnx(model_dir, settings)
    config = trt.state.config
    assert config.pools == {MemoryPoolType.WORKSPACE: int(2.5 * (1 << 30))}
    assert config.builder_optimization_level == 5
    assert config.hardware_compatibility_level == HardwareCompatibilityLevel.AMPERE_PLUS
    (profile,) = config.profiles
    assert profile.shapes["input"] == ((1, 1, 64, 64), (8, 1, 256, 256), (8, 1, 1024, 1024))
    assert res.sidecar.hardware_compat and res.sidecar.builder_optimization_level == 5


def test_profile_uses_model_size_multiple_and_channels(trt, tmp_path, cache_dir):
    folder = tmp_path / "ba"
    gen = GeneratorConfig(downscale=2, in_channels=2)  # size multiple 8
    save_model_config(folder, ModelConfig(generator=gen))
    (folder / ONNX_FP16).write_text("fp16 c=2", encoding="utf-8")
    with pytest.raises(InputError, match=r"multiple of 8.*use 512 or 520"):
        tb.engine_from_onnx(folder, cfg(cache_dir, tile=516))
    assert trt.state.builders == 0  # refused before TensorRT is touched
    tb.engine_from_onnx(folder, cfg(cache_dir, tile=512, batch=1))
    (profile,) = trt.state.config.profiles
    assert profile.shapes["input"][1] == (1, 2, 512, 512)


# --- timing cache -----------------------------------------------------------------------------


def test_timing_cache_is_read_and_written(trt, model_dir, cache_dir):
    first = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    files = list(cache_dir.glob("*.timing-cache"))
    assert [f.name for f in files] == [f"nvidia-rtx-a4000-sm86-trt{trt.__version__}.timing-cache"]
    assert files[0].read_bytes() == b"tactic0"
    assert trt.state.loaded_caches == [()]  # started empty
    assert all(c[2] is False for c in calls(trt, "set_timing_cache"))  # ignore_mismatch=False
    # another engine for the same GPU starts from the saved cache and extends it
    second = tb.engine_from_onnx(model_dir, cfg(cache_dir, tile=256))
    assert trt.state.loaded_caches[-1] == ("tactic0",)
    assert files[0].read_bytes() == b"tactic0;tactic1"
    assert first.engine_path != second.engine_path
    assert not list(cache_dir.glob("*.part")) and not list(cache_dir.glob("*.lock"))


def test_timing_cache_merges_entries_written_meanwhile(trt, model_dir, cache_dir, monkeypatch):
    tb.engine_from_onnx(model_dir, cfg(cache_dir))
    (path,) = cache_dir.glob("*.timing-cache")
    real_build = trt.Builder.build_serialized_network

    def build_while_another_process_saves(self, network, config):
        path.write_bytes(b"tactic0;fromother")
        return real_build(self, network, config)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", build_while_another_process_saves)
    tb.engine_from_onnx(model_dir, cfg(cache_dir, tile=256))
    assert calls(trt, "combine")
    assert set(path.read_bytes().decode().split(";")) == {"tactic0", "tactic1", "fromother"}


@pytest.mark.parametrize("content", [b"othergpu-entry", b"CORRUPT"])
def test_unusable_timing_cache_falls_back_to_empty(trt, model_dir, cache_dir, content, caplog):
    cache_dir.mkdir()
    path = cache_dir / f"nvidia-rtx-a4000-sm86-trt{trt.__version__}.timing-cache"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="cyclesr_deploy.tensorrt"):
        res = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    assert not res.skipped
    assert "timing cache" in caplog.text
    assert path.read_bytes() == b"tactic0"  # replaced by a cache valid here


def test_timing_cache_disabled(trt, model_dir, tmp_path):
    tb.engine_from_onnx(model_dir, cfg(None))
    assert calls(trt, "set_timing_cache") == []  # TensorRT keeps its in-memory default
    assert not list(tmp_path.rglob("*.timing-cache"))


# --- writing, skipping, rebuilding ----------------------------------------------------------------


def test_engine_and_sidecar_written_then_second_build_skipped(trt, model_dir, cache_dir, machine):
    first = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    assert not first.skipped and trt.state.builders == 1
    assert first.engine_path.parent == model_dir / ENGINES_DIR
    assert first.engine_path.name.startswith(f"nvidia-rtx-a4000-trt{trt.__version__[:6]}")
    sc = read_sidecar(first.sidecar_path)
    assert sc == first.sidecar
    assert sc.engine_sha256 == sha256_file(first.engine_path)
    assert sc.onnx_sha256 == sha256_file(model_dir / ONNX_FP16)
    assert (sc.trt_version, sc.gpu_name, sc.compute_capability) == (
        trt.__version__,
        "NVIDIA RTX A4000",
        "8.6",
    )
    assert (sc.driver_version, sc.cuda_driver_version, sc.cuda_runtime_version) == (
        "580.65.06",
        "13.0",
        "12.9",
    )
    assert sc.created.endswith("+00:00") and sc.output_name == "output"
    assert sc.profiles[0].opt == (4, 1, 512, 512)
    assert machine.devices_set == [0]
    leftovers = [p.name for p in (model_dir / ENGINES_DIR).iterdir()]
    assert sorted(leftovers) == sorted([first.engine_path.name, first.sidecar_path.name])

    second = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    assert second.skipped and trt.state.builders == 1
    assert (second.engine_path, second.sidecar) == (first.engine_path, first.sidecar)

    third = tb.engine_from_onnx(model_dir, cfg(cache_dir), overwrite=True)
    assert not third.skipped and trt.state.builders == 2
    assert third.sidecar.cache_key == first.sidecar.cache_key  # timestamps are not in the key
    assert third.engine_path == first.engine_path


def test_timing_cache_location_does_not_change_the_engine(trt, model_dir, tmp_path):
    a = tb.engine_from_onnx(model_dir, cfg(tmp_path / "a"))
    b = tb.engine_from_onnx(model_dir, cfg(tmp_path / "b"))
    assert b.skipped and a.engine_path == b.engine_path


@pytest.mark.parametrize("damage", ["engine", "no-sidecar", "bad-sidecar", "onnx"])
def test_rebuilds_when_the_cached_engine_is_unusable(trt, model_dir, cache_dir, damage):
    first = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    if damage == "engine":
        first.engine_path.write_bytes(b"PLAN-truncated")
    elif damage == "no-sidecar":  # crash between engine and sidecar
        first.sidecar_path.unlink()
    elif damage == "bad-sidecar":
        first.sidecar_path.write_text("{", encoding="utf-8")
    else:
        (model_dir / ONNX_FP16).write_text("fake-onnx fp16 v2", encoding="utf-8")
    again = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    assert not again.skipped and trt.state.builders == 2
    assert (again.engine_path == first.engine_path) is (damage != "onnx")


def test_rebuild_for_other_gpu_uses_other_file(trt, model_dir, cache_dir, machine):
    first = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    machine.gpu = cuda_runtime.DeviceInfo(0, "NVIDIA H200", "9.0", 141 << 30)
    second = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    assert not second.skipped
    assert second.engine_path.name.startswith("nvidia-h200-")
    assert first.engine_path.is_file() and second.engine_path.is_file()


def test_sidecar_failure_leaves_no_sidecar_and_next_build_redoes_it(
    trt, model_dir, cache_dir, monkeypatch
):
    real = tb.write_sidecar
    failures = [OSError("disk full")]

    def flaky(path, sidecar):
        if failures:
            raise failures.pop()
        return real(path, sidecar)

    monkeypatch.setattr(tb, "write_sidecar", flaky)
    with pytest.raises(OSError, match="disk full"):
        tb.engine_from_onnx(model_dir, cfg(cache_dir))
    engines = model_dir / ENGINES_DIR
    assert [p.suffix for p in engines.iterdir()] == [".engine"]  # engine first, no sidecar
    res = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    assert not res.skipped and res.sidecar_path.is_file() and trt.state.builders == 2


def test_engine_write_is_atomic(trt, model_dir, cache_dir, monkeypatch):
    def build_then_crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tb, "write_sidecar", build_then_crash)
    real = tb._build
    seen = {}

    def spy(*args, **kwargs):
        data, name = real(*args, **kwargs)
        seen["engines"] = list((model_dir / ENGINES_DIR).iterdir())
        return data, name

    monkeypatch.setattr(tb, "_build", spy)
    with pytest.raises(KeyboardInterrupt):
        tb.engine_from_onnx(model_dir, cfg(cache_dir))
    # during the build only the lock file existed; the engine appeared whole (renamed .part)
    assert [p.suffix for p in seen["engines"]] == [".lock"]
    assert not list((model_dir / ENGINES_DIR).glob("*.part"))
    assert not list((model_dir / ENGINES_DIR).glob("*.lock"))


# --- errors -----------------------------------------------------------------------------------


def test_parser_errors_name_the_onnx_and_the_node(trt, model_dir, cache_dir):
    onnx = model_dir / ONNX_FP16
    onnx.write_text("BAD fp16", encoding="utf-8")
    with pytest.raises(OnnxParseError) as info:
        tb.engine_from_onnx(model_dir, cfg(cache_dir))
    msg = str(info.value)
    assert str(onnx) in msg and f"TensorRT {trt.__version__}" in msg
    assert "node 7 (fancy_7 FancyOp): No importer registered for op: FancyOp" in msg
    assert isinstance(info.value, InputError)
    assert not list((model_dir / ENGINES_DIR).iterdir())  # no engine, lock released


def test_build_failure_reports_tensorrt_log(trt, model_dir, cache_dir):
    trt.state.build_fails = True
    with pytest.raises(EngineBuildError, match="Insufficient workspace for tactic X"):
        tb.engine_from_onnx(model_dir, cfg(cache_dir))
    assert not list((model_dir / ENGINES_DIR).iterdir())


def test_fp16_build_refuses_an_fp32_graph(trt, model_dir, cache_dir):
    with pytest.raises(OnnxParseError, match="no FP16 tensor"):
        tb.engine_from_onnx(model_dir, cfg(cache_dir), onnx_path=model_dir / ONNX_FILES["ab"])
    with pytest.raises(OnnxParseError, match="has FP16 tensors"):
        tb.engine_from_onnx(
            model_dir, cfg(cache_dir, precision="fp32"), onnx_path=model_dir / ONNX_FP16
        )
    assert calls(trt, "build_serialized_network") == []


def test_onnx_with_fixed_shape_or_other_input_name(trt, model_dir, cache_dir):
    onnx = model_dir / ONNX_FP16
    onnx.write_text("fp16 static", encoding="utf-8")
    with pytest.raises(
        InputError, match=r"shape \(1, 1, 64, 64\).*N is fixed at 1, .* needs \[4\]"
    ):
        tb.engine_from_onnx(model_dir, cfg(cache_dir))
    res = tb.engine_from_onnx(model_dir, cfg(cache_dir, tile=64, batch=1))  # fits the fixed shape
    assert not res.skipped
    onnx.write_text("fp16 name=x", encoding="utf-8")
    with pytest.raises(OnnxParseError, match=r"no input named 'input' \(inputs: \['x'\]\)"):
        tb.engine_from_onnx(model_dir, cfg(cache_dir))


def test_missing_onnx_says_to_export_first(trt, model_dir, cache_dir):
    (model_dir / ONNX_FP16).unlink()
    with pytest.raises(InputError, match="cyclesr export onnx"):
        tb.engine_from_onnx(model_dir, cfg(cache_dir))


def test_missing_tensorrt_names_the_extra(monkeypatch, model_dir):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingExtraError, match=r"cyclesr-deploy\[tensorrt\]"):
        tb.engine_from_onnx(model_dir)
    with pytest.raises(MissingExtraError):
        tb.load_engine(model_dir / "x.engine")


def test_old_tensorrt_refused(monkeypatch, machine, model_dir):
    install(monkeypatch, "8.6.1")
    with pytest.raises(TensorRTVersionError):
        tb.engine_from_onnx(model_dir, cfg(None))


# --- progress -----------------------------------------------------------------------------------


def test_progress_events_forwarded(trt, model_dir, cache_dir):
    events = []
    tb.engine_from_onnx(model_dir, cfg(cache_dir), progress=events.append)
    assert events == [
        tb.BuildProgress("Building engine", None, 0, 2),
        tb.BuildProgress("Building engine", None, 1, 2),
        tb.BuildProgress("Building engine", None, 2, 2),
        tb.BuildProgress("Building engine", None, 2, 2, done=True),
    ]
    assert isinstance(trt.state.config.progress_monitor, trt.IProgressMonitor)


def test_progress_callback_can_cancel(trt, model_dir, cache_dir):
    events = []

    def stop_after_first_step(event):
        events.append(event)
        return event.step < 1

    with pytest.raises(EngineBuildError, match="cancelled"):
        tb.engine_from_onnx(model_dir, cfg(cache_dir), progress=stop_after_first_step)
    assert len(events) == 2  # start, first step (then no more calls)
    assert not list((model_dir / ENGINES_DIR).iterdir())


def test_progress_callback_exception_is_reraised_after_the_build(trt, model_dir, cache_dir):
    class Boom(Exception):
        pass

    def explode(event):
        raise Boom("from callback")

    with pytest.raises(Boom):
        tb.engine_from_onnx(model_dir, cfg(cache_dir), progress=explode)
    assert calls(trt, "build_serialized_network")  # TensorRT returned normally first


# --- locking ------------------------------------------------------------------------------------


def test_waits_for_a_concurrent_build_and_reuses_its_engine(trt, model_dir, cache_dir, tmp_path):
    first = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    stash = tmp_path / "stash"
    stash.mkdir()
    first.engine_path.rename(stash / "e")
    first.sidecar_path.rename(stash / "s")
    lock = first.engine_path.with_name(first.engine_path.name + ".lock")
    lock.write_text(json.dumps({"pid": 4242, "host": "other"}), encoding="utf-8")

    def other_process_finishes():
        time.sleep(0.3)
        (stash / "e").rename(first.engine_path)
        (stash / "s").rename(first.sidecar_path)
        lock.unlink()

    worker = threading.Thread(target=other_process_finishes)
    worker.start()
    try:
        res = tb.engine_from_onnx(model_dir, cfg(cache_dir), lock_timeout_s=30)
    finally:
        worker.join()
    assert res.skipped and trt.state.builders == 1
    assert not lock.exists()


def test_lock_timeout_names_the_holder(trt, model_dir, cache_dir):
    first = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    lock = first.engine_path.with_name(first.engine_path.name + ".lock")
    lock.write_text(json.dumps({"pid": 4242, "host": "pc-7", "since": "x"}), encoding="utf-8")
    with pytest.raises(EngineBuildError, match=r"held by another build \(pid 4242 on pc-7"):
        tb.engine_from_onnx(model_dir, cfg(cache_dir), overwrite=True, lock_timeout_s=0.2)
    assert lock.exists()  # not ours: left alone


def test_build_lock_removes_stale_lock_and_releases(tmp_path):
    path = tmp_path / "sub" / "x.lock"
    path.parent.mkdir()
    path.write_text("{}", encoding="utf-8")
    waited = []
    with tb.BuildLock(path, stale_s=0.0, on_wait=lambda p, h: waited.append(p)) as lock:
        assert lock.held
        assert json.loads(path.read_text(encoding="utf-8"))["pid"] > 0
    assert not path.exists() and waited == []
    lock.release()  # idempotent


# --- facts and loading -------------------------------------------------------------------------


def test_gpu_facts(trt, machine):
    facts = tb.gpu_facts()
    assert facts.name == "NVIDIA RTX A4000" and facts.compute_capability == "8.6"
    assert facts.trt_version == trt.__version__
    assert (facts.driver_version, facts.cuda_driver_version, facts.cuda_runtime_version) == (
        "580.65.06",
        "13.0",
        "12.9",
    )
    machine.driver = None  # no NVML
    assert tb.gpu_facts(trt_version="10.0.0").driver_version == "unknown"


def test_load_engine_checks_and_deserializes(trt, model_dir, cache_dir, machine):
    built = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    engine = tb.load_engine(built.engine_path)
    assert engine.data == built.engine_path.read_bytes()
    assert machine.devices_set[-1] == 0


def test_load_engine_refuses_other_gpu_with_rebuild_hint(trt, model_dir, cache_dir, machine):
    built = tb.engine_from_onnx(model_dir, cfg(cache_dir, tile=256, batch=2))
    machine.gpu = cuda_runtime.DeviceInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24 << 30)
    with pytest.raises(EngineMismatchError) as info:
        tb.load_engine(built.engine_path)
    msg = str(info.value)
    assert "NVIDIA RTX A4000 (sm 8.6)" in msg and "NVIDIA GeForce RTX 4090 (sm 8.9)" in msg
    assert f'cyclesr export tensorrt "{model_dir}" --tile 256 --batch 2' in msg
    assert trt.state.deserialized == []
    assert tb.load_engine(built.engine_path, check=False) is not None  # explicit opt-out


def test_load_engine_refuses_other_tensorrt(monkeypatch, machine, model_dir, cache_dir):
    install(monkeypatch, "10.13.0.35")
    built = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    install(monkeypatch, "11.0.0")
    with pytest.raises(EngineMismatchError, match=r"engine 10\.13\.0\.35, installed 11\.0\.0"):
        tb.load_engine(built.engine_path)


def test_load_engine_refuses_changed_onnx_or_tampered_engine(trt, model_dir, cache_dir):
    built = tb.engine_from_onnx(model_dir, cfg(cache_dir))
    onnx = model_dir / ONNX_FP16
    original = onnx.read_text(encoding="utf-8")
    onnx.write_text("fake-onnx fp16 retrained", encoding="utf-8")
    with pytest.raises(EngineMismatchError, match="changed since the build"):
        tb.load_engine(built.engine_path)
    tb.load_engine(built.engine_path, onnx_path=model_dir / "missing.onnx")  # no ONNX: no check
    onnx.write_text(original, encoding="utf-8")
    built.engine_path.write_bytes(built.engine_path.read_bytes() + b"x")
    with pytest.raises(EngineMismatchError, match="sha256"):
        tb.load_engine(built.engine_path)


def test_load_engine_without_sidecar_or_undeserializable(trt, tmp_path):
    path = tmp_path / "x.engine"
    path.write_bytes(b"garbage")
    with pytest.raises(EngineMismatchError, match="sidecar missing"):
        tb.load_engine(path)
    with pytest.raises(EngineMismatchError, match="magicTag"):
        tb.load_engine(path, check=False)
    with pytest.raises(InputError, match="no such TensorRT engine"):
        tb.load_engine(tmp_path / "none.engine")


def test_logger_forwards_to_python_logging(trt, caplog):
    logger = tb.trt_logger(trt)
    assert logger is tb.trt_logger(trt)  # one per process
    with caplog.at_level(logging.DEBUG, logger="cyclesr_deploy.tensorrt"):
        logger.log(Severity.WARNING, "w1")
        logger.log(Severity.ERROR, "e1")
        logger.log(Severity.VERBOSE, "v1")
    assert "TensorRT: w1" in caplog.text and "TensorRT: e1" in caplog.text
    assert "v1" not in caplog.text
    assert logger.take_errors() == ["e1"] and logger.take_errors() == []
