"""Load TensorRT engines and read this machine's facts: the runtime side of TensorRT.

:func:`load_engine` (deserialize a plan after checking its sidecar, bytes and ONNX),
:func:`gpu_facts` (GPU, driver, TensorRT version) and the process-wide TensorRT logger live here
so that the runtime (:mod:`cyclesr_deploy.engines`) never imports :mod:`cyclesr_deploy.export`;
``export/tensorrt_build.py`` builds engines and imports these. ``tensorrt`` and cuda-python are
imported lazily (MissingExtraError naming the ``tensorrt`` extra).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclesr_deploy.engines.trt_config import (
    EngineMismatchError,
    EngineSidecar,
    GpuFacts,
    check_sidecar,
    list_engines,
    read_sidecar,
    rebuild_command,
    sha256_file,
    sidecar_differences,
    sidecar_path,
)
from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.model import ENGINES_DIR, FROZEN_ONNX

log = logging.getLogger("cyclesr_deploy.tensorrt")

_PURPOSE_BUILD = "Building a TensorRT engine"
_PURPOSE_LOAD = "Loading a TensorRT engine"


def _trt(purpose: str = _PURPOSE_BUILD) -> Any:
    return require("tensorrt", "tensorrt", purpose)


# --- logger (one per process, created lazily: TensorRT wants a single logger) --------------

_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def trt_logger(trt: Any | None = None) -> Any:
    """The process-wide ``trt.ILogger`` subclass forwarding to the ``cyclesr_deploy.tensorrt``
    Python logger (INTERNAL_ERROR/ERROR -> error, WARNING -> warning, INFO -> debug; VERBOSE
    dropped) and keeping the last error messages in ``.errors`` for exception texts."""
    global _LOGGER
    trt = trt or _trt()
    with _LOGGER_LOCK:
        if _LOGGER is None or _LOGGER.trt is not trt:
            _LOGGER = _make_logger(trt)
        return _LOGGER


def _make_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.trt = trt
            self.errors: collections.deque[str] = collections.deque(maxlen=32)

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= 1:
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif level == 2:
                log.warning("TensorRT: %s", msg)
            elif level == 3:
                log.debug("TensorRT: %s", msg)

        def take_errors(self) -> list[str]:
            out = list(self.errors)
            self.errors.clear()
            return out

    return _Logger()


def gpu_facts(device: int = 0, trt_version: str | None = None) -> GpuFacts:
    """Facts about CUDA device ``device`` (cuda-python: ``cudaGetDeviceProperties``,
    ``cudaDriverGetVersion``, ``cudaRuntimeGetVersion``; NVML for the driver release) and the
    installed TensorRT (``tensorrt.__version__`` unless ``trt_version`` is given)."""
    from cyclesr_deploy import cuda_runtime as cr

    info = cr.device_properties(device)
    if trt_version is None:
        trt_version = str(_trt().__version__)
    return GpuFacts(
        name=info.name,
        compute_capability=info.compute_capability,
        driver_version=cr.nvidia_driver_version() or "unknown",
        cuda_driver_version=cr.driver_version(),
        cuda_runtime_version=cr.runtime_version(),
        trt_version=trt_version,
        os=platform.system(),
    )


# --- load -----------------------------------------------------------------------------------


def load_engine(
    engine_path: str | Path,
    *,
    check: bool = True,
    device: int = 0,
    onnx_path: str | Path | None = None,
) -> Any:
    """Deserialize an engine (``trt.Runtime(logger).deserialize_cuda_engine``) on ``device``.

    With ``check`` (default), the sidecar must exist and fit this machine (OS, TensorRT
    version, GPU; see :func:`check_sidecar`), the engine bytes must match its sha256, and the
    model's ONNX (``onnx_path``, else the sidecar's ``onnx_file`` in the model folder, when
    present) must be the one it was built from; otherwise EngineMismatchError with the rebuild
    command. A None from TensorRT also raises EngineMismatchError with TensorRT's log.
    Returns the ``ICudaEngine`` (it keeps its Runtime alive).
    """
    from cyclesr_deploy import cuda_runtime

    trt = _trt(_PURPOSE_LOAD)
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise InputError(f"{engine_path}: no such TensorRT engine")
    data = engine_path.read_bytes()
    model_dir = engine_path.parent.parent if engine_path.parent.name == ENGINES_DIR else None
    hint = "cyclesr export tensorrt MODEL_DIR"
    if check:
        sidecar = read_sidecar(sidecar_path(engine_path))
        hint = rebuild_command(model_dir, sidecar.build)
        facts = gpu_facts(device, str(trt.__version__))
        onnx = Path(onnx_path) if onnx_path is not None else None
        if onnx is None and model_dir is not None:
            onnx = model_dir / sidecar.onnx_file
        onnx_sha = sha256_file(onnx) if onnx is not None and onnx.is_file() else None
        check_sidecar(sidecar, facts, onnx_sha, model_dir=model_dir)
        if hashlib.sha256(data).hexdigest() != sidecar.engine_sha256:
            raise EngineMismatchError(
                f"{engine_path} does not match its sidecar's sha256 (modified or truncated); "
                f"rebuild it with: {hint}",
                ["engine bytes"],
            )
    cuda_runtime.set_device(device)
    logger = trt_logger(trt)
    logger.take_errors()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        errors = logger.take_errors() or ["no error was logged"]
        raise EngineMismatchError(
            f"TensorRT {trt.__version__} could not deserialize {engine_path}:\n  - "
            + "\n  - ".join(errors)
            + f"\nRebuild it on this machine with: {hint}",
            ["deserialize"],
        )
    return engine


# --- which engine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    """An engine in ``MODEL_DIR/engines`` that fits this machine."""

    engine_path: Path
    sidecar: EngineSidecar


def generator_engines(
    model_dir: str | Path, graph: str | None = None
) -> list[tuple[Path, EngineSidecar]]:
    """:func:`list_engines` of ``model_dir`` built from ONNX file ``graph``; by default the
    generator's own engines (not those of the frozen-statistics graphs, which take two inputs)."""
    frozen = set(FROZEN_ONNX.values())
    return [
        (p, s)
        for p, s in list_engines(model_dir)
        if (s.onnx_file == graph if graph is not None else s.onnx_file not in frozen)
    ]


def find_engine(
    model_dir: str | Path,
    *,
    precision: str | None = None,
    device_id: int = 0,
    graph: str | None = None,
    accept: Callable[[EngineSidecar], bool] | None = None,
) -> EngineChoice:
    """The newest engine in ``model_dir/engines`` whose sidecar fits this machine (GPU model,
    TensorRT version, OS) and the folder's current ONNX; fp16 before fp32 unless ``precision``
    ("fp16"/"fp32") restricts it; ``graph``: built from that ONNX file (default: the generator's
    own, see :func:`generator_engines`); ``accept``: only sidecars it accepts (e.g. a profile
    that holds a frame size). InputError when there is none; EngineMismatchError, naming each
    engine's differences and the rebuild command, when none fits."""
    model_dir = Path(model_dir)
    build_hint = f"cyclesr export tensorrt {model_dir}"
    found = [(p, s) for p, s in generator_engines(model_dir, graph) if accept is None or accept(s)]
    if not found:
        raise InputError(
            f"no TensorRT engine in {model_dir / ENGINES_DIR}; build one with: {build_hint}"
        )
    wanted = [(p, s) for p, s in found if precision in (None, "auto", s.precision)]
    if not wanted:
        have = sorted({s.precision for _, s in found})
        raise InputError(
            f"no {precision} TensorRT engine in {model_dir / ENGINES_DIR} (found: "
            f"{', '.join(have)}); build one with: {build_hint} --precision {precision}"
        )
    wanted.sort(key=lambda item: item[1].precision != "fp16")  # stable: newest first within
    facts = gpu_facts(device_id)
    shas: dict[str, str | None] = {}
    problems: list[str] = []
    for path, sidecar in wanted:
        if sidecar.onnx_file not in shas:
            onnx = model_dir / sidecar.onnx_file
            shas[sidecar.onnx_file] = sha256_file(onnx) if onnx.is_file() else None
        diffs = sidecar_differences(sidecar, facts, shas[sidecar.onnx_file])
        if not diffs:
            return EngineChoice(path, sidecar)
        problems.append(f"{path.name}: {'; '.join(diffs)}")
    newest = wanted[0][1]
    raise EngineMismatchError(
        f"no TensorRT engine in {model_dir / ENGINES_DIR} fits this machine "
        f"({facts.describe()}):\n  - " + "\n  - ".join(problems) + "\nRebuild one here with: "
        f"{rebuild_command(model_dir, newest.build)}",
        problems,
    )
