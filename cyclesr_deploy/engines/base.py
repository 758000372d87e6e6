"""The Engine protocol every backend implements, and the description of its input.

An engine runs the LR -> HR generator on batches of tiles that are already normalized to the
model's range. It is a context manager: ``__enter__`` allocates sessions, device buffers and
streams; ``__exit__`` releases them. Inputs are validated against :attr:`Engine.input_spec`
once per shape by the caller (the pipeline, with :func:`check_batch_shape`), never inside
:meth:`Engine.infer`.

Buffer contract: the array returned by ``infer`` may be a buffer the engine reuses on the next
call (pinned host memory for TensorRT, a per-shape output for ONNX Runtime with I/O binding);
copy it (or blend it in) before calling again. Each engine's docstring says which it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from cyclesr_deploy.errors import InputError


@dataclass(frozen=True)
class TensorSpec:
    """Input description: ``shape`` is (N, C, H, W) with None for dynamic dims; H and W must be
    multiples of ``size_multiple``; ``max_batch``/``max_tile`` bound what one call accepts
    (None: unbounded, e.g. ONNX Runtime and PyTorch) and ``min_tile`` is the smallest (H, W)
    (a TensorRT profile's minimum; None: one size multiple); ``scale`` is the output/input
    size ratio."""

    name: str
    shape: tuple[int | None, int | None, int | None, int | None]
    dtype: np.dtype
    size_multiple: int
    scale: int
    max_batch: int | None = None
    max_tile: tuple[int, int] | None = None
    min_tile: tuple[int, int] | None = None

    @property
    def channels(self) -> int:
        return int(self.shape[1] or 1)


def check_batch_shape(spec: TensorSpec, shape: Sequence[int], name: str = "batch") -> None:
    """Raise InputError unless an (N, C, H, W) batch of ``shape`` fits ``spec``: 4 dims, at
    least one tile, the model's channels, H and W positive multiples of the size multiple,
    within ``max_batch``, ``min_tile``..``max_tile`` and any fixed dim of ``spec.shape``.

    Call it once per shape (the pipeline does, when a tile plan is made), not per batch.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) != 4:
        raise InputError(f"{name}: expected (N, C, H, W), got shape {dims}")
    n, c, h, w = dims
    if n < 1:
        raise InputError(f"{name}: empty batch (shape {dims})")
    channels = spec.shape[1]
    if channels is not None and c != channels:
        raise InputError(f"{name}: {c} channel(s), but the model takes {channels} ({spec.name!r})")
    m = spec.size_multiple
    if h < m or w < m or h % m or w % m:
        raise InputError(
            f"{name}: tiles of {h}x{w} px are not valid generator inputs; height and width must "
            f"be positive multiples of {m}"
        )
    if spec.max_batch is not None and n > spec.max_batch:
        raise InputError(
            f"{name}: {n} tiles per call, but this engine takes at most {spec.max_batch}; "
            f"use a batch size <= {spec.max_batch}"
        )
    if spec.max_tile is not None and (h > spec.max_tile[0] or w > spec.max_tile[1]):
        raise InputError(
            f"{name}: tiles of {h}x{w} px exceed this engine's maximum of "
            f"{spec.max_tile[0]}x{spec.max_tile[1]}; use smaller tiles or rebuild the engine "
            "for this size"
        )
    if spec.min_tile is not None and (h < spec.min_tile[0] or w < spec.min_tile[1]):
        raise InputError(
            f"{name}: tiles of {h}x{w} px are below this engine's minimum of "
            f"{spec.min_tile[0]}x{spec.min_tile[1]}; use larger tiles or rebuild the engine"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, dims, strict=True)):
        if axis != 1 and want is not None and got != want:
            raise InputError(
                f"{name}: {'NCHW'[axis]} is {got}, but this engine needs {want} (shape {dims})"
            )


@runtime_checkable
class Engine(Protocol):
    """A ready-to-run generator. ``name`` says exactly what runs, e.g.
    ``onnxruntime[CPUExecutionProvider]``, ``tensorrt[fp16]``, ``torch[cuda,fp16]``."""

    name: str
    input_spec: TensorSpec

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 in the model range -> (N, C, H*s, W*s) float32 (may be reused)."""
        ...


@runtime_checkable
class FrozenStatsEngine(Engine, Protocol):
    """Optional capability: an engine that runs an InstanceNorm generator with frame-level
    statistics, so that tiles of one frame are normalised alike (seam-free tiling; see
    :mod:`cyclesr_deploy.engines.frozen_torch`). Implemented by
    :mod:`cyclesr_deploy.engines.frozen`; the pipeline checks ``isinstance(engine,
    FrozenStatsEngine)``. Its ``infer`` is plain per-sample InstanceNorm inference."""

    def frame_statistics(self, frame_nchw: np.ndarray) -> np.ndarray:
        """(1, C, H, W) float32 whole frame in the model range (H, W padded to the size
        multiple) -> packed statistics (L,) float32 ``[mean_0, var_0, mean_1, var_1, ...]``."""
        ...

    def infer_with_stats(self, batch: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """``infer`` with every InstanceNorm using ``stats`` (from :meth:`frame_statistics`)
        for all tiles of ``batch`` (same buffer contract as ``infer``)."""
        ...
