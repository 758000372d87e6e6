"""The default tile size (``EnhanceConfig.tile = "auto"``): tiles sized to the machine.

A frame that must be tiled costs the overlap twice: 512-px tiles of the built-in model (156 px
overlap) compute 2.25x the pixels of a 4096^2 frame. So the default tile is the largest square
that fits the memory budget of one engine call and the engine (a multiple of the model's size
multiple, within a static engine's ``max_tile``), then, per frame shape, trimmed to the smallest
tile that needs no more tiles along each axis (the same number of tiles, less overlap and
padding). The budget is ``EnhanceConfig.whole_max_px`` pixels per engine call (the whole-frame
budget; :data:`ALWAYS_TILE_PX` when 0, "always tile"), lowered to half the free memory at
:data:`BYTES_PER_PX_NGF64` bytes per input pixel (scaled by the generator's width).

:func:`describe` says what a plan implies (tiles, overlap fraction, computed pixels per frame
pixel); the frame runner logs it once per frame shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.runtime.tiff import available_memory

#: fp32 activations of the canonical ngf-64 generator per input pixel (EnhanceConfig docs)
BYTES_PER_PX_NGF64 = 1024
#: EnhanceConfig.whole_max_px's default: the whole-frame budget, px per frame (4.2 MP: ~4 GiB of
#: fp32 activations for the ngf-64 generator); also the auto tile's budget per engine call
WHOLE_MAX_PX = 2048 * 2048
#: the auto tile's budget per engine call under ``whole_max_px`` 0 (always tile): 512^2 tiles
ALWAYS_TILE_PX = 512 * 512


@dataclass(frozen=True)
class TileBudget:
    """The auto tile's cap: ``side`` (px, square), from ``budget_px`` per engine call, and
    why (``reason``)."""

    side: int
    budget_px: int
    reason: str


def bytes_per_px(model: ModelConfig) -> int:
    """Estimated peak activation bytes per input pixel of one forward pass."""
    g = model.generator
    return max(1, BYTES_PER_PX_NGF64 * g.ngf // 64 * g.scale * g.scale)


def tile_budget(
    model: ModelConfig,
    whole_max_px: int,
    spec: TensorSpec | None = None,
    free_bytes: int | None = -1,
    settled: int | None = None,
) -> TileBudget:
    """The largest square tile (multiple of the size multiple) within the budget and the
    engine's ``max_tile`` (and at least its ``min_tile``). ``free_bytes`` -1: measured now
    (:func:`available_memory`); ``settled``: a budget measured before (``EnhanceConfig.
    tile_budget_px``: the cluster client's), used as it is."""
    m = model.size_multiple
    budget = whole_max_px or ALWAYS_TILE_PX
    reason = f"{budget / 1e6:.1f} MP per engine call (--whole-max-px)"
    if not whole_max_px:
        reason = f"{budget / 1e6:.2f} MP per engine call (--whole-max-px 0: always tile)"
    free = available_memory() if free_bytes == -1 and settled is None else free_bytes
    if settled is not None:
        budget = settled
        reason = f"{budget / 1e6:.2f} MP per engine call (settled when the run started)"
    elif free is not None:
        by_memory = free // 2 // bytes_per_px(model)
        if by_memory < budget:
            budget = max(m * m, by_memory)
            reason = f"{budget / 1e6:.1f} MP: half of the {free / 2**30:.1f} GiB free memory"
    side = max(m, math.isqrt(budget) // m * m)
    if spec is not None and spec.max_tile is not None and min(spec.max_tile) < side:
        side = min(spec.max_tile) // m * m
        reason += f"; the engine's maximum tile {spec.max_tile[0]}x{spec.max_tile[1]}"
    if spec is not None and spec.min_tile is not None and max(spec.min_tile) > side:
        side = max(spec.min_tile)
        reason += f"; the engine's minimum tile {spec.min_tile[0]}x{spec.min_tile[1]}"
    return TileBudget(side, budget, reason)


def tiles_along(length: int, tile: int, overlap: int, m: int) -> int:
    """Tiles along an axis of ``length`` px (the rule of ``runtime.tiling``'s plans)."""
    padded = -(-length // m) * m
    if padded <= tile:
        return 1
    stride = (tile - overlap) // m * m
    return -(-(padded - tile) // stride) + 1


def trimmed_tile(length: int, cap: int, overlap: int, m: int) -> int:
    """The smallest tile (multiple of ``m``, > overlap) that needs no more tiles along an axis
    of ``length`` px than ``cap`` does: the same tiles with less overlap and padding."""
    padded = -(-length // m) * m
    if padded <= cap:
        return padded
    want = tiles_along(length, cap, overlap, m)
    lo = (overlap // m + 1) * m
    # tiles_along is non-increasing in the tile: bisect for the smallest tile with <= want
    hi = cap
    while lo < hi:
        mid = (lo + hi) // 2 // m * m
        if mid < lo:
            mid = lo
        if tiles_along(length, mid, overlap, m) <= want:
            hi = mid
        else:
            lo = mid + m
    return hi


def describe(
    shape: tuple[int, int], tile: tuple[int, int], n_tiles: int, overlap: int, cap: TileBudget
) -> str:
    """One line: the tile chosen for frames of ``shape`` and what it implies."""
    computed = n_tiles * tile[0] * tile[1] / (shape[0] * shape[1])
    return (
        f"tile auto: {tile[0]}x{tile[1]} px for {shape[0]}x{shape[1]} frames ({n_tiles} tiles; "
        f"largest tile {cap.side} px within {cap.reason}); overlap {overlap} px = "
        f"{overlap / min(tile):.0%} of a tile side, {computed:.2f}x the frame's pixels computed"
    )
