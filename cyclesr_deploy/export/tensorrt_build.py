"""Build TensorRT engines from a model folder's ONNX, cached per machine; load them back.

TensorRT (``tensorrt``) and cuda-python are imported lazily; without them the functions raise
MissingExtraError naming the ``tensorrt`` extra. Settings, cache key, sidecar and version logic
are in :mod:`cyclesr_deploy.engines.trt_config` (pure, tested without TensorRT).

Build sequence (TensorRT 10.x/11.x Python API, deploy research notes §2.2)::

    builder = trt.Builder(logger)
    network = builder.create_network(flags)  # STRONGLY_TYPED bit: TRT 10 fp16 only
    parser  = trt.OnnxParser(network, logger); parser.parse_from_file(onnx)
    config  = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)
    config.builder_optimization_level = level
    profile = builder.create_optimization_profile(); profile.set_shape("input", min, opt, max)
    config.add_optimization_profile(profile)
    config.set_timing_cache(config.create_timing_cache(old), ignore_mismatch=False)
    plan    = builder.build_serialized_network(network, config)   # IHostMemory or None

Engines are executable artifacts: only load plans this package built into your model folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cyclesr_deploy.engines.tensorrt_load import _trt, gpu_facts, load_engine, trt_logger
from cyclesr_deploy.engines.trt_config import (
    BuildPlan,
    EngineBuildError,
    EngineMismatchError,
    EngineSidecar,
    GpuFacts,
    OnnxParseError,
    Profile,
    TensorRTBuildConfig,
    build_plan,
    cache_key,
    engine_paths,
    profiles,
    read_sidecar,
    sha256_file,
    sidecar_differences,
    timing_cache_file,
    write_sidecar,
)
from cyclesr_deploy.errors import InputError

log = logging.getLogger("cyclesr_deploy.tensorrt")

__all__ = ["EngineBuild", "engine_from_onnx", "gpu_facts", "load_engine"]

# --- progress -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildProgress:
    """One ``trt.IProgressMonitor`` event: ``phase`` (with its ``parent``) started (step 0),
    advanced (``step`` of ``total`` done) or finished (``done``)."""

    phase: str
    parent: str | None
    step: int
    total: int
    done: bool = False


ProgressCallback = Callable[[BuildProgress], "bool | None"]


def _make_monitor(trt: Any, callback: ProgressCallback) -> Any:
    """A ``trt.IProgressMonitor`` forwarding to ``callback``. TensorRT calls it from several
    threads, so calls are serialized. The callback returning False cancels the build
    (``step_complete`` returns False); an exception in it cancels the build and is re-raised
    by :func:`engine_from_onnx` once TensorRT returns."""

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, tuple[str | None, int]] = {}
            self.error: BaseException | None = None
            self.cancelled = False

        def _emit(self, event: BuildProgress) -> bool:
            with self._lock:
                if self.error is not None or self.cancelled:
                    return False
                try:
                    answer = callback(event)
                except BaseException as exc:  # KeyboardInterrupt too: re-raised after the build
                    self.error = exc
                    return False
                if answer is False:
                    self.cancelled = True
                    return False
                return True

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._phases[phase_name] = (parent_phase, int(num_steps))
            self._emit(BuildProgress(phase_name, parent_phase, 0, int(num_steps)))

        def step_complete(self, phase_name: str, step: int) -> bool:
            parent, total = self._phases.get(phase_name, (None, 0))
            return self._emit(BuildProgress(phase_name, parent, int(step) + 1, total))

        def phase_finish(self, phase_name: str) -> None:
            parent, total = self._phases.pop(phase_name, (None, 0))
            self._emit(BuildProgress(phase_name, parent, total, total, done=True))

    return _Monitor()


# --- lock file ------------------------------------------------------------------------------


class BuildLock:
    """An exclusive lock file (created with mode ``"x"``), so that two processes do not build
    the same engine or write the same timing cache at once. Waits up to ``timeout_s``; a lock
    older than ``stale_s`` (a crashed build) is removed. Works on Windows and POSIX."""

    def __init__(
        self,
        path: str | Path,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 0.5,
        stale_s: float = 6 * 3600.0,
        on_wait: Callable[[Path, dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.stale_s = stale_s
        self.on_wait = on_wait
        self.held = False

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        told = False
        while True:
            try:
                with self.path.open("x", encoding="utf-8") as fh:
                    json.dump(
                        {
                            "pid": os.getpid(),
                            "host": socket.gethostname(),
                            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        },
                        fh,
                    )
                self.held = True
                return
            except FileExistsError:
                pass
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                continue  # released between our two calls
            if age > self.stale_s:
                log.warning("removing stale lock %s (%.0f s old)", self.path, age)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            holder = self._holder()
            if time.monotonic() - start >= self.timeout_s:
                raise EngineBuildError(
                    f"{self.path} is held by another build (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('since', '?')}); wait for it "
                    "to finish, or delete the lock file if that process is gone"
                )
            if not told:
                told = True
                if self.on_wait is not None:
                    self.on_wait(self.path, holder)
                log.info("waiting for %s (held by pid %s)", self.path, holder.get("pid", "?"))
            time.sleep(min(self.poll_s, max(0.01, self.timeout_s - (time.monotonic() - start))))

    def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --- build ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineBuild:
    """Result of :func:`engine_from_onnx`: the engine and sidecar paths, the sidecar, whether
    an up-to-date engine was found and the build skipped, and the seconds spent."""

    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    skipped: bool
    seconds: float


def _reusable(
    engine_path: Path, side_path: Path, key: str, facts: GpuFacts, onnx_sha: str
) -> EngineSidecar | None:
    """The existing sidecar when engine + sidecar are complete, built from the same inputs and
    fit this machine; None otherwise (then we rebuild)."""
    if not (engine_path.is_file() and side_path.is_file()):
        return None
    try:
        sidecar = read_sidecar(side_path)
    except EngineMismatchError:
        return None
    if sidecar.cache_key != key or sidecar_differences(sidecar, facts, onnx_sha):
        return None
    if sha256_file(engine_path) != sidecar.engine_sha256:
        log.warning(
            "%s does not match its sidecar (truncated or replaced); rebuilding", engine_path
        )
        return None
    return sidecar


def _parser_error_text(err: Any) -> str:
    """``IParserError``: ``desc()``, ``node()``, ``node_name()``, ``node_operator()``."""
    try:
        text = str(err.desc())
    except Exception:
        return str(err)
    details = []
    for attr in ("node_name", "node_operator"):
        try:
            value = getattr(err, attr)()
        except Exception:
            continue
        if value:
            details.append(str(value))
    try:
        node = int(err.node())
    except Exception:
        node = -1
    where = f"node {node}" if node >= 0 else ""
    if details:
        where = f"{where} ({' '.join(details)})" if where else " ".join(details)
    return f"{where}: {text}" if where else text


def _check_network(
    network: Any, trt: Any, plan: BuildPlan, profs: list[Profile], onnx_path: Path
) -> str:
    """Check the parsed network against the profile and the precision; return the output name.

    fp16 builds need FP16 tensors in the graph (a strongly typed network from an FP32 ONNX would
    silently be FP32, roboflow/rf-detr#1453); fp32 builds must not have any.
    """
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    for prof in profs:
        tensor = inputs.get(prof.input_name)
        if tensor is None:
            raise OnnxParseError(
                f"{onnx_path}: no input named {prof.input_name!r} (inputs: {sorted(inputs)}); "
                "was it exported by cyclesr export onnx?"
            )
        dims = tuple(int(d) for d in tensor.shape)
        if len(dims) != 4:
            raise OnnxParseError(
                f"{onnx_path}: input {prof.input_name!r} has shape {dims}, not NCHW"
            )
        for axis, d in enumerate(dims):
            wanted = sorted({prof.min[axis], prof.opt[axis], prof.max[axis]})
            if d >= 0 and wanted != [d]:
                raise InputError(
                    f"{onnx_path}: input {prof.input_name!r} has shape {dims} (-1: dynamic); "
                    f"its {'NCHW'[axis]} is fixed at {d}, but the profile min/opt/max "
                    f"{prof.min}/{prof.opt}/{prof.max} needs {wanted}; re-export with dynamic "
                    "N/H/W or build for that shape"
                )
    half = trt.DataType.HALF
    has_half = any(
        network.get_layer(i).get_output(j).dtype == half
        for i in range(network.num_layers)
        for j in range(network.get_layer(i).num_outputs)
    )
    if plan.precision == "fp16" and not has_half:
        raise OnnxParseError(
            f"{onnx_path}: an fp16 engine needs the FP16 ONNX ({plan.onnx_name}), but this graph "
            "has no FP16 tensor; TensorRT would build it in FP32. Export the FP16 ONNX first "
            "(cyclesr export onnx) or build with --precision fp32"
        )
    if plan.precision == "fp32" and has_half:
        raise OnnxParseError(
            f"{onnx_path}: an fp32 engine needs the FP32 ONNX ({plan.onnx_name}), but this graph "
            "has FP16 tensors; build with --precision fp16 or pass the FP32 ONNX"
        )
    if network.num_outputs != 1:
        raise OnnxParseError(f"{onnx_path}: expected one output, found {network.num_outputs}")
    return str(network.get_output(0).name)


def _load_timing_cache(config: Any, path: Path) -> bytes:
    """``create_timing_cache(bytes)`` + ``set_timing_cache(cache, ignore_mismatch=False)``;
    an unreadable or mismatched cache falls back to an empty one with a warning (and is
    replaced when the build saves). Returns the bytes found on disk (b"" if none)."""
    data = b""
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("cannot read timing cache %s (%s); starting empty", path, exc)
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
                cache = None
        except Exception as exc:
            log.warning("timing cache %s rejected (%s)", path, exc)
            cache = None
        if cache is None:
            log.warning("timing cache %s is unusable here; starting an empty one", path)
    if cache is None:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return data


def _save_timing_cache(config: Any, path: Path, loaded: bytes, lock_timeout_s: float) -> None:
    """Serialize ``config.get_timing_cache()`` to ``path`` atomically, under a lock; if another
    process updated the file since we read it (``loaded``: the bytes seen then),
    ``ITimingCache.combine`` its entries first."""
    from cyclesr_deploy.io import atomic_path

    try:
        with BuildLock(path.with_name(path.name + ".lock"), timeout_s=lock_timeout_s):
            cache = config.get_timing_cache()
            if path.is_file():
                on_disk = path.read_bytes()
                if on_disk and on_disk != loaded:
                    try:
                        cache.combine(config.create_timing_cache(on_disk), False)
                    except Exception as exc:
                        log.warning("could not merge timing cache %s (%s)", path, exc)
            data = memoryview(cache.serialize())
            with atomic_path(path) as part:
                part.write_bytes(data)
    except (OSError, EngineBuildError) as exc:  # the engine is fine without a saved cache
        log.warning("timing cache not saved to %s: %s", path, exc)


def _network_flags(trt: Any, plan: BuildPlan) -> int:
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return flags


def _build(
    trt: Any,
    *,
    onnx_path: Path,
    plan: BuildPlan,
    cfg: TensorRTBuildConfig,
    profs: list[Profile],
    timing_path: Path | None,
    progress: ProgressCallback | None,
    lock_timeout_s: float,
) -> tuple[memoryview, str]:
    """Parse, configure, build; returns (serialized plan, output tensor name)."""
    logger = trt_logger(trt)
    logger.take_errors()
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
        errors = errors or logger.take_errors() or ["no details"]
        raise OnnxParseError(
            f"TensorRT {trt.__version__} could not parse {onnx_path}:\n  - " + "\n  - ".join(errors)
        )
    output_name = _check_network(network, trt, plan, profs, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_bytes)
    config.builder_optimization_level = cfg.opt_level
    if cfg.hardware_compat:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for prof in profs:
        profile = builder.create_optimization_profile()
        profile.set_shape(prof.input_name, prof.min, prof.opt, prof.max)
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(
                f"TensorRT rejected the optimization profile {prof.min}/{prof.opt}/{prof.max}: "
                + "; ".join(logger.take_errors())
            )
    loaded = _load_timing_cache(config, timing_path) if timing_path is not None else b""
    monitor = None
    if progress is not None:
        monitor = _make_monitor(trt, progress)
        config.progress_monitor = monitor

    serialized = builder.build_serialized_network(network, config)

    if monitor is not None:
        if monitor.error is not None:
            raise monitor.error
        if monitor.cancelled:
            raise EngineBuildError("TensorRT engine build cancelled")
    if serialized is None:
        errors = logger.take_errors() or ["no error was logged"]
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path} "
            f"(profiles {[(p.min, p.opt, p.max) for p in profs]}, workspace "
            f"{cfg.workspace_gib:g} GiB):\n  - " + "\n  - ".join(errors)
        )
    if timing_path is not None:
        _save_timing_cache(config, timing_path, loaded, min(lock_timeout_s, 120.0))
    return memoryview(serialized), output_name


def engine_from_onnx(
    model_dir: str | Path,
    build_cfg: TensorRTBuildConfig | None = None,
    *,
    onnx_path: str | Path | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    device: int = 0,
    lock_timeout_s: float = 3600.0,
) -> EngineBuild:
    """Build (or find) the TensorRT engine of ``model_dir`` for this GPU and ``build_cfg``.

    The ONNX is ``generator.fp16.onnx`` (fp16) or ``generator.onnx`` (fp32) unless
    ``onnx_path`` is given. If ``model_dir/engines`` already holds an engine with the same
    :func:`cache_key` whose sidecar fits this machine and whose bytes match it, nothing is built
    (``skipped=True``) unless ``overwrite``. Builds hold ``<engine>.lock`` (another process
    building the same engine is waited for, then its result is reused), reuse and update the
    per-GPU timing cache, and write the engine, then the sidecar, atomically. ``progress``
    receives :class:`BuildProgress` events (return False to cancel).

    Raises InputError (bad tile sizes, missing ONNX), OnnxParseError, EngineBuildError,
    MissingExtraError (no TensorRT / cuda-python).
    """
    from cyclesr_deploy import __version__, cuda_runtime
    from cyclesr_deploy.io import atomic_path
    from cyclesr_deploy.model import load_model

    cfg = build_cfg or TensorRTBuildConfig()
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    # tile sizes are checked against the model before TensorRT is even imported
    profs = profiles(cfg, model.size_multiple, model.scale, channels=model.generator.in_channels)
    trt = _trt()
    plan = build_plan(str(trt.__version__), cfg.precision)
    onnx = Path(onnx_path) if onnx_path is not None else model_dir / plan.onnx_name
    if not onnx.is_file():
        raise InputError(
            f"{onnx}: ONNX not found; export it first (cyclesr export onnx {model_dir})"
        )
    onnx_sha = sha256_file(onnx)
    facts = gpu_facts(device, str(trt.__version__))
    key = cache_key(onnx_sha, cfg, facts)
    engine_path, side_path = engine_paths(model_dir, key, facts)

    if not overwrite and (found := _reusable(engine_path, side_path, key, facts, onnx_sha)):
        log.info("TensorRT engine up to date: %s", engine_path)
        return EngineBuild(engine_path, side_path, found, skipped=True, seconds=0.0)

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    lock = BuildLock(engine_path.with_name(engine_path.name + ".lock"), timeout_s=lock_timeout_s)
    with lock:
        if not overwrite and (found := _reusable(engine_path, side_path, key, facts, onnx_sha)):
            log.info("TensorRT engine built by another process: %s", engine_path)
            return EngineBuild(engine_path, side_path, found, skipped=True, seconds=0.0)
        cuda_runtime.set_device(device)
        timing_path = (
            timing_cache_file(cfg.timing_cache_dir, facts) if cfg.timing_cache_dir else None
        )
        log.info("building TensorRT engine %s from %s (minutes)", engine_path.name, onnx.name)
        start = time.perf_counter()
        data, output_name = _build(
            trt,
            onnx_path=onnx,
            plan=plan,
            cfg=cfg,
            profs=profs,
            timing_path=timing_path,
            progress=progress,
            lock_timeout_s=lock_timeout_s,
        )
        seconds = time.perf_counter() - start
        with atomic_path(engine_path) as part:
            part.write_bytes(data)
        sidecar = EngineSidecar(
            cache_key=key,
            engine_file=engine_path.name,
            engine_sha256=hashlib.sha256(data).hexdigest(),
            onnx_file=onnx.name,
            onnx_sha256=onnx_sha,
            precision=cfg.precision,
            trt_version=facts.trt_version,
            gpu_name=facts.name,
            compute_capability=facts.compute_capability,
            driver_version=facts.driver_version,
            cuda_driver_version=facts.cuda_driver_version,
            cuda_runtime_version=facts.cuda_runtime_version,
            os=facts.os,
            profiles=profs,
            input_name=profs[0].input_name,
            output_name=output_name,
            build=cfg.engine_settings(),
            builder_optimization_level=cfg.opt_level,
            hardware_compat=cfg.hardware_compat,
            strongly_typed=plan.strongly_typed,
            network_flags=list(plan.network_flags),
            builder_flags=list(plan.builder_flags),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            cyclesr_version=__version__,
            build_seconds=round(seconds, 3),
        )
        write_sidecar(side_path, sidecar)
    log.info("TensorRT engine written: %s (%.1f s)", engine_path, seconds)
    return EngineBuild(engine_path, side_path, sidecar, skipped=False, seconds=seconds)
