"""Tiled inference for fully convolutional generators: plan, batch, blend. numpy only.

``plan_tiles(shape, cfg)`` (cached per shape and config) lays out the tiles once; the tiles of a
frame are gathered into batches (:func:`gather_batches`) for any ``predict`` callable mapping
(N, C, h, w) float32 -> (N, C', h*scale, w*scale); a :class:`Blender` puts the outputs back
together as a weighted mean. Written by hand because MONAI's ``sliding_window_inference``
needs torch (100+ MB, and the runtime is torch-free) and ``tiler`` has no output scale,
receptive-field halo or origin lattice.

Rules:

* Tile origins are multiples of ``size_multiple``, so the generator's stride-2 stages sample the
  same lattice as in whole-frame inference; stride = (tile - overlap) rounded down to that
  multiple, and the last tile is moved inward to end at the frame edge (real overlaps >= overlap).
* An axis that is not a multiple of ``size_multiple`` is reflect-padded at its end to the next
  multiple (padding cropped off the output); an axis shorter than the tile gets one tile of the
  padded length. A frame that fits one tile is predicted whole: no blending.
* Windows are separable, w = wy(y) * wx(x), and the tiles form a product grid, so the summed
  windows are Ny(y) * Nx(x): each tile's window is divided by them once, in the plan. Per frame,
  pixels with one contributing tile are copied and the overlap bands are one multiply-add.
* A tile side on the image border is never tapered (weight 1 up to the edge).
* ``cosine``: on each side with a neighbour, weight 0 over the first ``halo`` px (those outputs
  saw the tile's own padding instead of the neighbour's pixels), then a raised-cosine ramp of
  overlap - 2 halo px, then 1; the two ramps of a pair sum to 1. A wider real overlap (the last
  tile) keeps that ramp, centred, with wider zero and one zones: fewer pixels to blend.
  With halo >= the receptive-field half-width this reproduces whole-frame inference exactly
  for networks without global operations (InstanceNorm is global: see ``for_model``).
* ``crop``: the cosine with halo = overlap / 2, a hard cut in the middle (CSBDeep, CAREamics).
* ``gaussian``: MONAI's window exp(-d^2 / 2 sigma^2), sigma = sigma_scale * tile, clamped to
  >= 1e-3 per axis (MONAI clamps the 2-D map), set to 1 from the centre out on border sides.
* ``constant``: 1 everywhere (plain mean where tiles overlap).

Buffer contract: the batch handed to ``predict`` is a reused buffer; ``predict`` may modify it
but must not keep it after returning. ``predict`` may return a reused buffer (or the batch
itself): the blender copies or accumulates each output tile before the next call.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cyclesr_deploy.errors import InputError

__all__ = [
    "BLENDS",
    "Blender",
    "Tile",
    "TilePlan",
    "TiledPredictor",
    "TilingConfig",
    "clear_plan_cache",
    "gather_batches",
    "plan_cache_info",
    "plan_tiles",
    "predict_tiled",
    "predict_tiled_batch",
]

Blend = Literal["cosine", "gaussian", "constant", "crop"]
BLENDS: tuple[str, ...] = ("cosine", "gaussian", "constant", "crop")
Predict = Callable[[np.ndarray], np.ndarray]

_GAUSSIAN_MIN = 1e-3  # MONAI's floor for the Gaussian importance map


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class TilingConfig:
    """Tile geometry and blending, in input pixels; validated once, at creation.

    ``tile`` is an int or (height, width); ``overlap`` is between neighbouring tiles; ``halo`` is
    the zero-weight margin of the cosine blend (ignored by the others); ``batch_size`` is tiles
    per ``predict`` call (the tiles of one frame; batches never span frames); ``sigma_scale`` is the
    Gaussian blend's sigma per tile length.
    """

    tile: int | tuple[int, int] = 512
    overlap: int = 64
    size_multiple: int = 4
    scale: int = 1
    blend: Blend = "cosine"
    halo: int = 0
    batch_size: int = 4
    pad_mode: Literal["reflect"] = "reflect"
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        tile = self.tile
        if isinstance(tile, (int, np.integer)):
            tile = (int(tile), int(tile))
        if not (isinstance(tile, tuple | list) and len(tile) == 2):
            raise InputError(f"tiling: tile must be an int or (height, width), got {self.tile!r}")
        tile = (int(tile[0]), int(tile[1]))
        object.__setattr__(self, "tile", tile)
        for name in ("size_multiple", "scale", "overlap", "halo", "batch_size"):
            if not isinstance(getattr(self, name), int | np.integer):
                raise InputError(f"tiling: {name} must be an integer, got {getattr(self, name)!r}")
        m = self.size_multiple
        if m < 1:
            raise InputError(f"tiling: size_multiple must be >= 1, got {m}")
        for side in tile:
            if side < m or side % m:
                raise InputError(
                    f"tiling: tile {tile[0]}x{tile[1]} px is invalid; each side must be a "
                    f"positive multiple of size_multiple={m} (e.g. {max(m, side // m * m)})"
                )
        if self.scale < 1:
            raise InputError(f"tiling: scale must be a positive integer (1 or 2), got {self.scale}")
        if self.blend not in BLENDS:
            raise InputError(
                f"tiling: blend must be one of {', '.join(BLENDS)}, got {self.blend!r}"
            )
        if self.pad_mode != "reflect":
            raise InputError(f"tiling: pad_mode must be 'reflect', got {self.pad_mode!r}")
        if self.overlap < 0:
            raise InputError(f"tiling: overlap must be >= 0 px, got {self.overlap}")
        if min(tile) - self.overlap < m:
            raise InputError(
                f"tiling: overlap {self.overlap} px must be smaller than the tile "
                f"({min(tile)} px) by at least size_multiple={m} px (overlap < tile)"
            )
        if self.halo < 0:
            raise InputError(f"tiling: halo must be >= 0 px, got {self.halo}")
        if self.blend == "cosine" and 2 * self.halo > self.overlap:
            raise InputError(
                f"tiling: the cosine blend needs overlap >= 2 * halo (both neighbours' halos), "
                f"got overlap {self.overlap} px and halo {self.halo} px"
            )
        if self.batch_size < 1:
            raise InputError(f"tiling: batch_size must be >= 1, got {self.batch_size}")
        if not self.sigma_scale > 0:
            raise InputError(f"tiling: sigma_scale must be > 0, got {self.sigma_scale}")

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(height, width) of a full tile in input pixels."""
        return self.tile  # type: ignore[return-value]  # normalised in __post_init__

    @classmethod
    def for_model(
        cls,
        receptive_field: int,
        size_multiple: int = 4,
        scale: int = 1,
        tile: int | tuple[int, int] = 512,
        batch_size: int = 4,
        blend: Blend = "cosine",
        ramp: int = 32,
    ) -> TilingConfig:
        """Defaults from a generator's receptive field (``GeneratorConfig.receptive_field``).

        halo = ceil(RF / 2) + 1: an output pixel this far from a tile edge sees no padding (the
        +1 covers the half-pixel asymmetry of x2 stages); overlap = 2 * halo + ``ramp``, rounded
        up to ``size_multiple`` (>= RF: both neighbours' halos plus the cosine ramp). resnet_9blocks
        (RF 169): halo 86, overlap 204. Exact only without InstanceNorm, which normalises per
        tile: for IN generators prefer whole-frame inference (a tile >= the frame).
        """
        if receptive_field < 1:
            raise InputError(f"tiling: receptive_field must be >= 1, got {receptive_field}")
        if ramp < 0:
            raise InputError(f"tiling: ramp must be >= 0 px, got {ramp}")
        halo = math.ceil(receptive_field / 2) + 1
        overlap = _round_up(2 * halo + ramp, size_multiple)
        shape = (tile, tile) if isinstance(tile, int | np.integer) else tuple(tile)
        if min(shape) - overlap < size_multiple:
            raise InputError(
                f"tiling: tile {shape[0]}x{shape[1]} px is too small for receptive field "
                f"{receptive_field} px (overlap {overlap} px); use a tile >= "
                f"{_round_up(overlap + size_multiple, size_multiple)} px or whole-frame inference"
            )
        return cls(
            tile=tile,
            overlap=overlap,
            size_multiple=size_multiple,
            scale=scale,
            blend=blend,
            halo=halo,
            batch_size=batch_size,
        )


@dataclass(frozen=True, eq=False)
class Tile:
    """One tile: where it reads (padded input grid), where it writes (padded output grid, scale x),
    and its windows per axis over its output: ``window_*`` raw, ``weight_*`` divided by the
    summed windows of all tiles (the normalised weights of all tiles sum to 1 per pixel)."""

    index: int
    grid_index: tuple[int, int]
    origin: tuple[int, int]
    read: tuple[slice, slice]
    write: tuple[slice, slice]
    window_y: np.ndarray
    window_x: np.ndarray
    weight_y: np.ndarray
    weight_x: np.ndarray

    def window(self) -> np.ndarray:
        """Raw 2-D blend window (output px)."""
        return np.outer(self.window_y, self.window_x)

    def weight(self) -> np.ndarray:
        """Normalised 2-D weight (output px): window / summed windows."""
        return np.outer(self.weight_y, self.weight_x)


# One blending step of a tile: (cell, out rows, out cols, tile rows, tile cols, weight or None).
# weight None: the tile is the only contributor there (copy); else broadcastable float32 weights.
_Op = tuple[int, slice, slice, slice, slice, "np.ndarray | None"]
# Gather of a tile from the unpadded frame: (rows, cols, in-frame rows, in-frame cols,
# frame rows of the padded rows or None, frame rows of the whole tile, frame cols of the padded
# cols or None).
_Gather = tuple[slice, slice, int, int, "np.ndarray | None", np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True, eq=False)
class TilePlan:
    """Tile layout for one frame shape and config; immutable and shared (cached by plan_tiles)."""

    config: TilingConfig
    shape: tuple[int, int]
    padded_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    grid: tuple[int, int]
    tiles: tuple[Tile, ...]
    weight_sum_y: np.ndarray
    weight_sum_x: np.ndarray
    _ops: tuple[tuple[_Op, ...], ...] = field(repr=False)
    _gather: tuple[_Gather, ...] = field(repr=False)
    _n_cells: int = field(repr=False)
    _max_weighted_cell: int = field(repr=False)

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def out_shape(self) -> tuple[int, int]:
        """Output (height, width): input shape times scale (padding cropped off)."""
        return (self.shape[0] * self.scale, self.shape[1] * self.scale)

    @property
    def tile_out_shape(self) -> tuple[int, int]:
        return (self.tile_shape[0] * self.scale, self.tile_shape[1] * self.scale)

    @property
    def whole_frame(self) -> bool:
        """True when one tile covers the (padded) frame: no blending at all."""
        return len(self.tiles) == 1

    def weight_sum(self) -> np.ndarray:
        """Summed raw windows of all tiles on the padded output grid (the normaliser)."""
        return np.outer(self.weight_sum_y, self.weight_sum_x)

    def read_tile(self, frame: np.ndarray, tile_index: int, out: np.ndarray) -> np.ndarray:
        """Copy tile ``tile_index`` of ``frame`` (C, H, W) into ``out`` (C, th, tw) float32,
        reflect-padded where it passes the frame's end (np.pad's reflect, edge not repeated);
        casts from the frame's dtype. For pipelines that fill their own (pinned) batches."""
        rows, cols, in_y, in_x, pad_rows, rows_all, pad_cols = self._gather[tile_index]
        np.copyto(out[:, :in_y, :in_x], frame[:, rows, cols], casting="unsafe")
        if pad_rows is not None:
            np.copyto(out[:, in_y:, :in_x], frame[:, pad_rows, cols], casting="unsafe")
        if pad_cols is not None:
            np.copyto(out[:, :, in_x:], frame[:, rows_all[:, None], pad_cols], casting="unsafe")
        return out


def _axis_origins(length: int, tile: int, cfg: TilingConfig) -> tuple[int, int, list[int]]:
    """(padded length, tile length, origins) along one axis; see the module rules."""
    m = cfg.size_multiple
    padded = _round_up(length, m)
    if padded <= tile:
        return padded, padded, [0]
    stride = (tile - cfg.overlap) // m * m
    n = -(-(padded - tile) // stride) + 1
    return padded, tile, [min(i * stride, padded - tile) for i in range(n)]


def _ramp_up(overlap: int, ramp: int) -> np.ndarray:
    """Weight of the later tile of a pair over their overlap: 0, a raised-cosine ramp of
    ``ramp`` px centred in the overlap, then 1 (the earlier tile gets 1 minus this)."""
    lead = (overlap - ramp) // 2
    up = np.zeros(overlap)
    up[lead + ramp :] = 1.0
    if ramp > 0:
        up[lead : lead + ramp] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
    return up


def _window(n: int, left: int, right: int, cfg: TilingConfig) -> np.ndarray:
    """Raw 1-D window (float64) of a tile of n output px overlapping its neighbours by
    ``left``/``right`` output px (0: no neighbour, the image border)."""
    s = cfg.scale
    w = np.ones(n)
    if cfg.blend == "gaussian":
        d = np.arange(n) - (n - 1) / 2
        g = np.exp(-(d**2) / (2 * (cfg.sigma_scale * n) ** 2))
        g = np.maximum(g, _GAUSSIAN_MIN)
        if left == 0:
            g[d <= 0] = 1.0
        if right == 0:
            g[d >= 0] = 1.0
        return g
    if cfg.blend in ("cosine", "crop"):
        # the same ramp at every seam, (overlap - 2 halo) wide: real overlaps are >= overlap,
        # and where the last tile (moved inward) overlaps more, the extra widens the 0/1 zones
        ramp = (cfg.overlap - 2 * cfg.halo) * s if cfg.blend == "cosine" else 0
        if left:
            w[:left] *= _ramp_up(left, min(ramp, left))
        if right:
            w[n - right :] *= 1.0 - _ramp_up(right, min(ramp, right))
    return w


def _axis_plan(length: int, tile: int, cfg: TilingConfig):
    """Per-axis layout: origins, raw/normalised windows, summed windows, and the segments of
    the (cropped) output axis with their contributing tiles and weights."""
    s = cfg.scale
    padded, tile, origins = _axis_origins(length, tile, cfg)
    n_out = tile * s
    starts = [o * s for o in origins]
    windows = []
    for i, start in enumerate(starts):
        left = starts[i - 1] + n_out - start if i > 0 else 0
        right = start + n_out - starts[i + 1] if i + 1 < len(starts) else 0
        windows.append(_window(n_out, left, right, cfg))
    total = np.zeros(padded * s)
    for start, w in zip(starts, windows, strict=True):
        total[start : start + n_out] += w
    if not (total > 0).all():  # guarded by TilingConfig validation; kept as an invariant check
        raise AssertionError("tiling: a pixel has zero summed weight")
    weights = [w / total[start : start + n_out] for start, w in zip(starts, windows, strict=True)]
    end = length * s  # the output is cropped to the unpadded frame
    supports = []
    for start, q in zip(starts, weights, strict=True):
        nz = np.flatnonzero(q)
        supports.append((start + int(nz[0]), start + int(nz[-1]) + 1))
    cuts = sorted({0, end} | {min(max(c, 0), end) for sup in supports for c in sup})
    segments = []
    for lo, hi in itertools.pairwise(cuts):
        contrib = [i for i, (a, b) in enumerate(supports) if a <= lo and hi <= b]
        weighted = len(contrib) > 1  # one contributor: its normalised weight is exactly 1
        segments.append(
            (
                lo,
                hi,
                [
                    (i, _readonly(weights[i][lo - starts[i] : hi - starts[i]].astype(np.float32)))
                    if weighted
                    else (i, None)
                    for i in contrib
                ],
            )
        )
    return padded, tile, origins, windows, weights, total, segments


def _reflect_index(length: int, padded: int) -> np.ndarray:
    """Frame index of each padded position (reflect at the end; repeats for tiny frames)."""
    return np.pad(np.arange(length), (0, padded - length), mode="reflect")


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=64)
def _cached_plan(shape: tuple[int, int], cfg: TilingConfig) -> TilePlan:
    height, width = shape
    s = cfg.scale
    py, ty, oys, wins_y, wts_y, sum_y, segs_y = _axis_plan(height, cfg.tile_shape[0], cfg)
    px, tx, oxs, wins_x, wts_x, sum_x, segs_x = _axis_plan(width, cfg.tile_shape[1], cfg)
    idx_y, idx_x = _reflect_index(height, py), _reflect_index(width, px)
    tiles, gathers = [], []
    for iy, oy in enumerate(oys):
        for ix, ox in enumerate(oxs):
            f32 = np.float32
            tiles.append(
                Tile(
                    index=len(tiles),
                    grid_index=(iy, ix),
                    origin=(oy, ox),
                    read=(slice(oy, oy + ty), slice(ox, ox + tx)),
                    write=(slice(oy * s, (oy + ty) * s), slice(ox * s, (ox + tx) * s)),
                    window_y=_readonly(wins_y[iy].astype(f32)),
                    window_x=_readonly(wins_x[ix].astype(f32)),
                    weight_y=_readonly(wts_y[iy].astype(f32)),
                    weight_x=_readonly(wts_x[ix].astype(f32)),
                )
            )
            in_y, in_x = min(ty, height - oy), min(tx, width - ox)
            rows_all = idx_y[oy : oy + ty]
            gathers.append(
                (
                    slice(oy, oy + in_y),
                    slice(ox, ox + in_x),
                    in_y,
                    in_x,
                    rows_all[in_y:] if in_y < ty else None,
                    rows_all,
                    idx_x[ox + in_x : ox + tx] if in_x < tx else None,
                )
            )
    ops: list[list[_Op]] = [[] for _ in tiles]
    max_weighted = 0
    for ky, (y0, y1, cy) in enumerate(segs_y):
        for kx, (x0, x1, cx) in enumerate(segs_x):
            cell = ky * len(segs_x) + kx
            for iy, wy in cy:
                for ix, wx in cx:
                    t = iy * len(oxs) + ix
                    if wy is None and wx is None:
                        weight = None
                    elif wx is None:
                        weight = wy[:, None]
                    elif wy is None:
                        weight = wx[None, :]
                    else:
                        weight = np.outer(wy, wx)
                    if weight is not None:
                        max_weighted = max(max_weighted, (y1 - y0) * (x1 - x0))
                        _readonly(weight)
                    sy, sx = oys[iy] * s, oxs[ix] * s
                    ops[t].append(
                        (
                            cell,
                            slice(y0, y1),
                            slice(x0, x1),
                            slice(y0 - sy, y1 - sy),
                            slice(x0 - sx, x1 - sx),
                            weight,
                        )
                    )
    return TilePlan(
        config=cfg,
        shape=(height, width),
        padded_shape=(py, px),
        tile_shape=(ty, tx),
        grid=(len(oys), len(oxs)),
        tiles=tuple(tiles),
        weight_sum_y=_readonly(sum_y.astype(np.float32)),
        weight_sum_x=_readonly(sum_x.astype(np.float32)),
        _ops=tuple(tuple(o) for o in ops),
        _gather=tuple(gathers),
        _n_cells=len(segs_y) * len(segs_x),
        _max_weighted_cell=max_weighted,
    )


def plan_tiles(shape: Sequence[int], cfg: TilingConfig) -> TilePlan:
    """Tile plan for frames of ``shape`` = (height, width) in input px; cached per (shape, cfg)
    since every frame of a stack shares one."""
    if len(shape) != 2:
        raise InputError(f"tiling: shape must be (height, width), got {tuple(shape)}")
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise InputError(f"tiling: frame shape must be positive, got {height}x{width}")
    return _cached_plan((height, width), cfg)


def plan_cache_info() -> functools._CacheInfo:
    """Hits and misses of the plan cache."""
    return _cached_plan.cache_info()


def clear_plan_cache() -> None:
    _cached_plan.cache_clear()


class Blender:
    """Weighted-mean accumulator for the output tiles of one frame at a time.

    ``add(tile_index, output_tile)`` in any order, then ``result()``; the next ``add`` (or
    ``start``) begins a new frame. Buffers (scratch, per-cell flags) are reused between
    frames; the only per-frame allocation is the output, unless ``start(out=...)`` supplies it.
    The output tile is copied or accumulated at once (it may be a reused buffer).
    """

    def __init__(self, plan: TilePlan) -> None:
        self.plan = plan
        self._written = bytearray(plan._n_cells)
        self._scratch: np.ndarray | None = None
        self._out: np.ndarray | None = None
        self._added = 0
        self._active = False

    def start(self, out: np.ndarray | None = None) -> None:
        """Begin a frame, writing into ``out`` (C, H*s, W*s) float32 if given (else allocated
        at the first ``add``, with the tile's channel count)."""
        if out is not None and (out.shape[1:] != self.plan.out_shape or out.dtype != np.float32):
            raise ValueError(
                f"tiling: out must be float32 of shape (C, {self.plan.out_shape[0]}, "
                f"{self.plan.out_shape[1]}), got {out.dtype} {out.shape}"
            )
        self._out = out
        self._written[:] = bytes(len(self._written))
        self._added = 0
        self._active = True

    @property
    def complete(self) -> bool:
        """All tiles of the current frame added."""
        return self._active and self._added == len(self.plan.tiles)

    def add(self, tile_index: int, output_tile: np.ndarray) -> None:
        """Blend the prediction (C, th*s, tw*s) of tile ``tile_index`` into the frame."""
        plan = self.plan
        if output_tile.ndim != 3 or output_tile.shape[1:] != plan.tile_out_shape:
            raise ValueError(
                f"tiling: predict returned a tile of shape {output_tile.shape}, expected "
                f"(C, {plan.tile_out_shape[0]}, {plan.tile_out_shape[1]}) (scale {plan.scale})"
            )
        if not self._active:
            self.start()
        elif self._added == len(plan.tiles):
            raise RuntimeError("tiling: every tile of this frame was added; call result() first")
        out = self._out
        if out is None:
            out = self._out = np.empty((output_tile.shape[0], *plan.out_shape), np.float32)
        written = self._written
        for cell, oy, ox, ty, tx, weight in plan._ops[tile_index]:
            dst = out[:, oy, ox]
            src = output_tile[:, ty, tx]
            if weight is None:  # sole contributor: its normalised weight is 1
                np.copyto(dst, src)
            elif not written[cell]:  # first contributor assigns: no zero-fill needed
                np.multiply(src, weight, out=dst)
                written[cell] = 1
            else:
                tmp = self._scratch_for(dst.shape)
                np.multiply(src, weight, out=tmp)
                np.add(dst, tmp, out=dst)
        self._added += 1

    def _scratch_for(self, shape: tuple[int, ...]) -> np.ndarray:
        size = shape[0] * shape[1] * shape[2]
        if self._scratch is None or self._scratch.size < size:
            self._scratch = np.empty(shape[0] * self.plan._max_weighted_cell, np.float32)
        return self._scratch[:size].reshape(shape)

    def result(self) -> np.ndarray:
        """The blended frame (C, H*s, W*s) float32; raises if a tile is missing."""
        if self._out is None or not self.complete:
            raise RuntimeError(
                f"tiling: {self._added} of {len(self.plan.tiles)} tiles added; cannot blend yet"
            )
        out, self._out = self._out, None
        self._active = False
        return out


def gather_batches(
    frame: np.ndarray,
    plan: TilePlan,
    batch_size: int,
    *,
    transform: Callable[[np.ndarray], object] | None = None,
    buffer: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, range]]:
    """The tiles of one frame (C, H, W) gathered into batches: yields ``(data, tiles)``, data
    (batch_size, C, th, tw) float32 whose first ``len(tiles)`` slots hold those tiles (the rest
    zero, for fixed-batch engines). ``transform(view)`` runs in place on the filled slots
    (normalization); ``buffer`` is reused for every batch (else each batch is a new array, for
    pipelines that hand batches to another thread). The one gather loop of the package."""
    n_tiles = len(plan.tiles)
    shape = (batch_size, frame.shape[0], *plan.tile_shape)
    if buffer is not None and buffer.shape != shape:
        raise ValueError(f"tiling: buffer shape {buffer.shape}, expected {shape}")
    for first in range(0, n_tiles, batch_size):
        tiles = range(first, min(first + batch_size, n_tiles))
        data = buffer if buffer is not None else np.empty(shape, np.float32)
        for slot, t in enumerate(tiles):
            plan.read_tile(frame, t, data[slot])
        n = len(tiles)
        if transform is not None:
            transform(data[:n])
        data[n:] = 0
        yield data, tiles


class TiledPredictor:
    """``predict`` run tile by tile over frames, with buffers reused across calls (streaming).

    ``self(frame)``: (C, H, W) or (H, W) -> (C', H*s, W*s) or (H*s, W*s) float32;
    ``self.stack(frames)``: (N, C, H, W) or (N, H, W), frame by frame, up to
    ``config.batch_size`` tiles of a frame per ``predict`` call. Not thread-safe: one per
    thread. (The runtime's frames go through :class:`cyclesr_deploy.runtime.runner.FrameRunner`,
    which gathers with the same :func:`gather_batches`.)
    """

    def __init__(self, predict: Predict, config: TilingConfig) -> None:
        self.predict = predict
        self.config = config
        self._batch: np.ndarray | None = None
        self._blender: Blender | None = None

    def __call__(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim not in (2, 3):
            raise InputError(f"tiling: frame must be (H, W) or (C, H, W), got shape {frame.shape}")
        flat = frame.ndim == 2
        stack = frame[None, None] if flat else frame[None]
        if out is not None:
            out = out[None, None] if flat else out[None]
        result = self.stack(stack, out=out)
        return result[0, 0] if flat else result[0]

    def stack(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Predict every frame of ``frames`` (N, C, H, W) or (N, H, W); ``out`` (N, C', H*s,
        W*s) float32 is filled and returned when given."""
        frames = np.asarray(frames)
        if frames.ndim not in (3, 4):
            raise InputError(
                f"tiling: frames must be (N, C, H, W) or (N, H, W), got shape {frames.shape}"
            )
        if frames.dtype.kind not in "iuf":
            raise InputError(f"tiling: frames must be numeric, got dtype {frames.dtype}")
        flat = frames.ndim == 3
        if flat:
            frames = frames[:, None]
            if out is not None:
                out = out[:, None]
        plan = plan_tiles(frames.shape[2:], self.config)
        batch_size = min(self.config.batch_size, len(plan.tiles))
        shape = (batch_size, frames.shape[1], *plan.tile_shape)
        if self._batch is None or self._batch.shape != shape:
            self._batch = np.empty(shape, np.float32)
        if self._blender is None or self._blender.plan is not plan:
            self._blender = Blender(plan)
        blender = self._blender
        for index, frame in enumerate(frames):
            blender.start(None if out is None else out[index])
            for data, tiles in gather_batches(frame, plan, batch_size, buffer=self._batch):
                result = np.asarray(self.predict(data[: len(tiles)]))
                if result.ndim != 4 or result.shape[0] != len(tiles):
                    raise ValueError(
                        f"tiling: predict must return (N, C, h, w) with N = {len(tiles)}, got "
                        f"shape {result.shape}"
                    )
                if out is None:
                    out = np.empty((len(frames), result.shape[1], *plan.out_shape), np.float32)
                    blender.start(out[index])
                for slot, t in enumerate(tiles):
                    blender.add(t, result[slot])
            blender.result()
        assert out is not None
        return out[:, 0] if flat else out


def predict_tiled(
    frame: np.ndarray,
    predict: Predict,
    plan_or_cfg: TilePlan | TilingConfig,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Tiled ``predict`` of one frame (C, H, W) or (H, W) -> (C', H*s, W*s) or (H*s, W*s)
    float32. For a stream of frames keep one :class:`TiledPredictor` (reuses its buffers)."""
    cfg = plan_or_cfg.config if isinstance(plan_or_cfg, TilePlan) else plan_or_cfg
    if np.ndim(frame) not in (2, 3):
        raise InputError(f"tiling: frame must be (H, W) or (C, H, W), got shape {np.shape(frame)}")
    if isinstance(plan_or_cfg, TilePlan) and np.shape(frame)[-2:] != plan_or_cfg.shape:
        raise InputError(
            f"tiling: frame shape {np.shape(frame)} does not match the plan's {plan_or_cfg.shape}"
        )
    return TiledPredictor(predict, cfg)(frame, out=out)


def predict_tiled_batch(
    frames: np.ndarray,
    predict: Predict,
    cfg: TilingConfig,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Tiled ``predict`` of a stack (N, C, H, W) or (N, H, W), frame by frame."""
    return TiledPredictor(predict, cfg).stack(frames, out=out)
