"""Whether a run gets a frozen-statistics engine, and which: the policy behind
``open_engine(..., tiling=...)``.

A tiled run of an InstanceNorm generator normalises every tile with its own statistics (seams)
unless the engine can freeze frame-level statistics
(:class:`~cyclesr_deploy.engines.base.FrozenStatsEngine`). :func:`choose_frozen` decides, by
probing (files, sidecars, installed packages, the auto order's plan), never by opening an
engine to look at it:

* ``tiling="none"`` (untiled run), ``"naive"``, or a generator without InstanceNorm: the plain
  engine;
* ``"frozen"``: a frozen-statistics engine of the requested backend (an error when there is
  none: the message says how to export one);
* ``"auto"``: TensorRT's two engines when TensorRT, a CUDA device and engines that fit this
  GPU and every frame size (``frames``; not taken when the sizes are unknown, as for
  ``watch`` and ``Enhancer``) are there (backend auto or tensorrt, precision auto or fp32); else
  PyTorch's (backend torch); else, with backend auto, the plain engine when the auto order
  picks a GPU engine (a GPU beats CPU frozen statistics; tiles are then normalised per tile,
  which the frame runner warns about); else the two graphs on the CPU when exported (OpenVINO
  when installed and the backend is auto or openvino, else ONNX Runtime);
  else the plain engine (with a warning for backend onnxruntime, saying how to export them).

The OpenVINO frozen engine runs frames that run whole at the precision ``open_engine``'s
precision rule gives OpenVINO (``--precision auto``: the gate's choice; default: fp32) and its
frozen statistics and tiles at fp32; the selection says which part runs at what, and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyclesr_deploy.engines.frozen_stats import frozen_graphs_missing
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ModelConfig

TILING_MODES: tuple[str, ...] = ("none", "auto", "frozen", "naive")
NO_TENSORRT = "TensorRT not installed"
UNKNOWN_FRAMES = (
    "frame sizes unknown before the run (watch, Enhancer; its statistics engine holds fixed "
    "sizes): use --tiling frozen (tiling='frozen') to take the TensorRT frozen engines anyway"
)
FrameShapes = Sequence[tuple[int, int]] | Callable[[], Sequence[tuple[int, int]]]
#: the OpenVINO precision of frames that run whole: () -> (precision or None, how, refused)
WholePrecision = Callable[[], tuple[str | None, str, list[tuple[str, str]]]]


@dataclass
class FrozenChoice:
    """The policy's answer: ``engine`` (a frozen-statistics engine, not opened) or None for the
    plain engine; ``reason`` (one line), ``rejected`` (candidate, why not) and ``warnings``
    (for the user: a requested frozen engine that cannot be used)."""

    engine: Any = None
    reason: str = ""
    rejected: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _shapes(frames: FrameShapes) -> list[tuple[int, int]]:
    return list(frames() if callable(frames) else frames)


def _tensorrt(
    model_dir: Path,
    frames: FrameShapes,
    installed: Callable[[], bool],
    no_cuda: Callable[[], str | None],
) -> tuple[Any, str]:
    """(TensorRT frozen engine, "") when one fits this machine and every frame, else
    (None, why not)."""
    from cyclesr_deploy.engines.frozen import open_frozen_engine

    if not installed():
        return None, NO_TENSORRT
    why = no_cuda()
    if why:
        return None, why
    shapes = _shapes(frames)
    if not shapes:  # watch, Enhancer: a statistics engine holds fixed frame sizes only
        return None, UNKNOWN_FRAMES
    try:
        engine = open_frozen_engine(model_dir, "tensorrt", frames=shapes)
    except (InputError, RuntimeError, OSError) as exc:  # none built, other sizes, other GPU
        return None, " ".join(str(exc).split())
    return engine, ""


def _whole_precision(
    engine: Any, gate: WholePrecision, rejected: list[tuple[str, str]]
) -> tuple[Any, str]:
    """(engine, what precision each part runs and why): an OpenVINO frozen engine runs frames
    that run whole at the precision the gate allows (``gate()``: precision, how chosen,
    refused), re-created for it; its frozen statistics and tiles, and every other CPU frozen
    engine, FP32 (never silently: the selection says it)."""
    from cyclesr_deploy.engines.frozen import OpenVINOFrozenEngine, open_frozen_engine

    if isinstance(engine, OpenVINOFrozenEngine):
        whole, how, refused = gate()
        whole = whole or "fp32"
        rejected += [(f"openvino-{p}", w) for p, w in refused]
        if whole != engine.whole_precision:
            stats, threads = engine.stats, engine.threads
            engine = open_frozen_engine(
                engine.model_dir, "openvino", stats=stats, threads=threads, whole_precision=whole
            )
        return engine, (
            f"frames that run whole: {whole} ({how}); frozen statistics and tiles: fp32 (the "
            "precision gate measures the whole-frame graphs only)"
        )
    if str(getattr(engine, "name", "")).startswith("onnxruntime"):
        return engine, "fp32 throughout (ONNX Runtime on the CPU)"
    return engine, f"precision: {getattr(engine, 'precision', 'fp32')}"


def choose_frozen(
    model_dir: Path,
    model: ModelConfig,
    *,
    backend: str,
    precision: str,
    tiling: str,
    stats: str,
    frames: FrameShapes,
    threads: int | None,
    gpu_plan: Callable[[], bool],
    tensorrt_installed: Callable[[], bool],
    no_cuda: Callable[[], str | None],
    openvino_installed: Callable[[], bool] = lambda: False,
    whole_precision: WholePrecision = lambda: ("fp32", "fp32", []),
) -> FrozenChoice:
    """Apply the policy of the module docstring. ``gpu_plan()``: whether ``backend="auto"``
    would pick a GPU engine (the auto order's plan, probed); ``tensorrt_installed()``,
    ``openvino_installed()``;
    ``no_cuda()``: why no CUDA device is usable, or None; ``frames``: the (H, W) frame sizes,
    or a function giving them (called only when a TensorRT statistics engine is considered)."""
    from cyclesr_deploy.engines.frozen import open_frozen_engine

    if tiling not in TILING_MODES:
        raise InputError(f"tiling must be one of {', '.join(TILING_MODES)}, not {tiling!r}")
    if tiling == "none":
        return FrozenChoice(reason="untiled run")
    if tiling == "naive":
        return FrozenChoice(reason="--tiling naive: per-tile statistics")
    if model.generator.norm != "instance":
        return FrozenChoice(reason="no InstanceNorm: tiles are exact without frozen statistics")
    kwargs = {"precision": precision, "stats": stats, "threads": threads}
    if tiling == "frozen":
        shapes = _shapes(frames) if backend == "tensorrt" else ()
        engine = open_frozen_engine(model_dir, backend, frames=shapes, **kwargs)
        rejected: list[tuple[str, str]] = []
        engine, parts = _whole_precision(engine, whole_precision, rejected)
        return FrozenChoice(engine, f"--tiling frozen: {engine.selection}; {parts}", rejected)
    choice = FrozenChoice()
    fp32_ok = precision in ("auto", "fp32")
    if backend in ("auto", "tensorrt") and fp32_ok:
        engine, why = _tensorrt(model_dir, frames, tensorrt_installed, no_cuda)
        if engine is not None:
            return FrozenChoice(engine, f"tiled run: {engine.selection}")
        choice.rejected.append(("tensorrt-frozen", why))
        if backend == "tensorrt" and why != NO_TENSORRT:
            choice.warnings.append(why)
    if backend == "torch":
        engine = open_frozen_engine(model_dir, "torch", **kwargs)
        return FrozenChoice(engine, f"tiled run: {engine.selection}", choice.rejected)
    if backend in ("auto", "onnxruntime", "openvino") and fp32_ok:
        if backend == "auto" and gpu_plan():
            choice.reason = "a GPU engine beats CPU frozen statistics (tiles: per-tile statistics)"
            return choice
        missing = frozen_graphs_missing(model_dir)
        if missing is None:
            cpu = backend
            if backend == "auto":
                cpu = "openvino" if openvino_installed() else "onnxruntime"
            engine = open_frozen_engine(model_dir, cpu, stats=stats, threads=threads)
            engine, parts = _whole_precision(engine, whole_precision, choice.rejected)
            return FrozenChoice(engine, f"tiled run: {engine.selection}; {parts}", choice.rejected)
        label = "openvino-frozen" if backend == "openvino" else "onnxruntime-frozen"
        choice.rejected.append((label, missing))
        if backend != "auto":
            choice.warnings.append(missing)
    choice.reason = "no frozen-statistics engine for this backend and precision"
    return choice
