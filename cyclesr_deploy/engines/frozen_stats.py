"""Frozen InstanceNorm statistics, torch-free: which graphs, which estimate, which crops.

The one place for the statistics' estimate and geometry, shared by the engines
(:mod:`cyclesr_deploy.engines.frozen`, :mod:`cyclesr_deploy.engines.tensorrt_frozen`), the torch
layer (:mod:`cyclesr_deploy.engines.frozen_torch`) and the exporters; it imports none of them
(no import cycle) and no torch.

Statistics estimate (``engine.stats``, set by the pipeline from ``EnhanceConfig.stats``):
``"auto"`` (default) = the one the model folder's check chose (:func:`estimate_for_model`,
``frozen_stats.json``; crops without a check);
``"crops"`` runs the statistics pass on a batch of crops of the frame
(:func:`crops_for`: ~20 % of its pixels; memory bounded by the crops), pooled with
:func:`calibration_weights` (the crops' 4 x 4 sub-blocks weighted so that their mean intensity
equals the frame's); on the reference CycleGAN 47-51 dB against whole-frame inference at
1024^2 and 2048^2 for ~0.1-0.15x the tile pass's time (torch CPU,
``benchmarks/results/frozen_norm.md``);
``"whole"`` runs it on the whole frame
(exact statistics, tiled == whole-frame output up to float rounding; memory and time of one
whole-frame pass).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import EXPORT_ONNX_HINT, FROZEN_CHECK, FROZEN_ONNX, ModelFolder

StatsEstimate = Literal["auto", "whole", "crops"]
STATS_ESTIMATES: tuple[str, ...] = ("auto", "whole", "crops")
log = logging.getLogger("cyclesr_deploy.engines.frozen")

#: ONNX metadata key of the frozen-statistics graphs (written by export/frozen_onnx.py)
KEY_FROZEN_STATS = "cyclesr.frozen_stats"
STATS_NAME = "stats"  # the tile graph's statistics input


def frozen_graphs_missing(model_dir: str | Path) -> str | None:
    """None when ``model_dir`` has both frozen-statistics graphs, else a message saying how to
    export them."""
    model_dir = Path(model_dir)
    missing = [f for f in FROZEN_ONNX.values() if not (model_dir / f).is_file()]
    if not missing:
        return None
    return (
        f"{model_dir} has no {' / '.join(missing)} (the frozen InstanceNorm graphs); export them "
        f"with: {EXPORT_ONNX_HINT.format(d=model_dir)}"
    )


# ---- crop geometry of the "crops" estimate (torch-free; engines.frozen_torch uses it) ----

Layout = Literal["spread", "cells"]


def crop_origins(
    shape: tuple[int, int],
    crop: tuple[int, int],
    n: int,
    size_multiple: int,
    layout: Layout = "spread",
) -> list[tuple[int, int]]:
    """``n`` crop origins over a frame of ``shape`` on a near-square grid (ny x nx >= n,
    row-major, the first ``n``), rounded down to ``size_multiple`` (the generator's sampling
    lattice). ``layout="spread"``: first and last crops at the frame edges (evenly spaced);
    ``"cells"``: each crop centred in its cell of an ny x nx partition of the frame
    (stratified sampling: no crop on the frame edge unless the crops fill the frame)."""
    h, w = shape
    ch, cw = crop
    aspect = w / h
    ny = max(1, round(math.sqrt(n / aspect)))
    nx = max(1, math.ceil(n / ny))
    if layout == "cells":
        ys = np.clip((np.arange(ny) + 0.5) * h / ny - ch / 2, 0, h - ch)
        xs = np.clip((np.arange(nx) + 0.5) * w / nx - cw / 2, 0, w - cw)
    elif layout == "spread":
        ys = np.linspace(0, h - ch, ny) if ny > 1 else np.array([(h - ch) / 2])
        xs = np.linspace(0, w - cw, nx) if nx > 1 else np.array([(w - cw) / 2])
    else:
        raise InputError(f"frozen_norm: crop layout must be 'spread' or 'cells', got {layout!r}")
    m = size_multiple
    grid = [(int(y) // m * m, int(x) // m * m) for y in ys for x in xs]
    return grid[:n]


CROP_AREA = 0.2  # default crops: about this fraction of the frame (measured, see crops_for)
MAX_CROPS = 64  # default crops at most (memory of one pass over 64 x 256^2 px); stats graph size
WEIGHTS_NAME = "weights"  # stats graph input (MAX_CROPS, BLOCKS, BLOCKS): first N crops used
MAX_TILT = 20.0  # calibration: largest ratio between two blocks' per-pixel weights
BLOCKS = 4  # calibration: each crop is cut into BLOCKS x BLOCKS sub-blocks


def crops_for(
    shape: Sequence[int], size_multiple: int = 4, area: float = CROP_AREA
) -> tuple[int, int]:
    """The default crop estimate ``(crop, n)`` for a frame of ``shape`` (..., H, W): crops of
    384 px (frames up to 1536 px a side) or 256 px, n = ny x nx for a grid fitted to the
    frame's aspect (placed by :func:`crop_origins`, ``"spread"``; on unusual aspect ratios its
    last row may be partial) covering about ``area`` (default :data:`CROP_AREA`) of the frame,
    at least 2 crops when the frame holds 2 (calibration needs two) and at most
    :data:`MAX_CROPS`; pooled with
    :func:`calibration_weights`. Measured (``benchmarks/results/frozen_norm.md``): 1024^2 ->
    2 x 384 px, 2048^2 -> 12 x 256 px, 4096^2 -> 49 x 256 px."""
    h, w = int(shape[-2]), int(shape[-1])
    crop = 384 if max(h, w) <= 1536 else 256
    crop = min(crop, -(-min(h, w) // size_multiple) * size_multiple)
    if not 0 < area <= 1:
        raise InputError(f"frozen stats: crop area must be in (0, 1], got {area}")
    target = area * h * w / crop**2
    ny = max(1, round(math.sqrt(target * h / w)))
    nx = max(1, round(target / ny))
    n = min(MAX_CROPS, ny * nx)
    if n < 2 and h * w >= 2 * crop * crop:
        n = 2
    return crop, n


def block_index(size: int, blocks: int) -> np.ndarray:
    """Block of each of ``size`` pixels when a side is cut into ``blocks`` parts: ``(i *
    blocks) // size`` (integer arithmetic, the same in numpy, torch and the ONNX graph; at a
    layer of stride s the same formula partitions the feature map, which matches the input's
    blocks exactly when the side is a multiple of blocks x s, as the default crops are, and
    within a pixel otherwise)."""
    return (np.arange(size, dtype=np.int64) * blocks) // size


def calibration_weights(
    frame: np.ndarray,
    origins: Sequence[tuple[int, int]],
    crop: tuple[int, int],
    *,
    blocks: int = BLOCKS,
    max_tilt: float = MAX_TILT,
) -> np.ndarray:
    """Pooling weights (n, blocks, blocks) float64 of the crops' sub-blocks (each crop cut into
    blocks x blocks parts by :func:`block_index`): positive, summing to 1 over the blocks'
    pixels (``sum(w * pixels) == 1``), chosen so that the pooled mean intensity of the crops
    equals the frame's (calibration estimator with the raking distance, Deville & Saerndal
    1992: a block's share ~ ``pixels * exp(lambda * z)``, ``z`` = its mean input intensity, one
    Newton solve for lambda).

    Why: a layer's frame statistics are an average over the frame of local features, and how
    much bright structure the crops hold decides most of their sampling error; weighting them
    to reproduce the frame's (known, free) mean intensity cancels that part. Sub-blocks give
    the calibration more than one value per crop (with 2 crops at 1024^2 it otherwise only
    interpolates between two). The tilt is bounded (largest / smallest per-pixel weight <=
    ``max_tilt``), so a frame whose mean lies outside the blocks' range is calibrated as far as
    the bound allows, never onto a single block. Equal per-pixel weights when the blocks all
    have the same mean. ``frame``: (..., H, W) (channels averaged)."""
    x = np.asarray(frame, dtype=np.float64)
    x = x.reshape(-1, *x.shape[-2:]).mean(axis=0)
    ch, cw = crop
    n = len(origins)
    if n == 0:
        raise InputError("calibration_weights: no crops")
    if blocks < 1:
        raise InputError(f"calibration_weights: blocks must be >= 1, got {blocks}")
    by, bx = block_index(ch, blocks), block_index(cw, blocks)
    pixels = np.outer(np.bincount(by, minlength=blocks), np.bincount(bx, minlength=blocks))
    sums = np.zeros((n, blocks, blocks))
    for i, (y, x0) in enumerate(origins):
        c = x[y : y + ch, x0 : x0 + cw]
        rows = np.stack([c[by == b].sum(axis=0) for b in range(blocks)])  # (blocks, cw)
        sums[i] = np.stack([rows[:, bx == b].sum(axis=1) for b in range(blocks)], axis=1)
    present = np.broadcast_to(pixels > 0, sums.shape)
    z = sums[present] / np.broadcast_to(pixels, sums.shape)[present]  # block means
    base = np.broadcast_to(pixels, sums.shape)[present].astype(np.float64)
    base /= base.sum()
    share = _rake(z, base, float(x.mean()), max_tilt)
    w = np.zeros(sums.shape)
    w[present] = share / np.broadcast_to(pixels, sums.shape)[present]
    return w


def _rake(z: np.ndarray, base: np.ndarray, target: float, max_tilt: float) -> np.ndarray:
    """Shares ``base * exp(lambda * z)`` normalised, with ``sum(share * z) == target`` where
    the bound ``exp(|lambda| * (max z - min z)) <= max_tilt`` allows (Newton on lambda)."""
    spread = float(z.max() - z.min())
    if spread <= 1e-12 * max(1.0, float(np.abs(z).max())):
        return base.copy()
    u = (z - float(base @ z)) / spread  # spread 1
    t = (target - float(base @ z)) / spread
    bound = math.log(max_tilt)
    lam = 0.0
    for _ in range(50):
        e = base * np.exp(lam * u - np.max(lam * u))
        w = e / e.sum()
        m = float(w @ u)
        v = float(w @ (u - m) ** 2)
        if abs(m - t) < 1e-12 or v <= 1e-15:
            break
        lam = float(np.clip(lam - (m - t) / v, -bound, bound))  # stays at a binding bound
    e = base * np.exp(lam * u - np.max(lam * u))
    return e / e.sum()


def _check_estimate(stats: str) -> str:
    if stats not in STATS_ESTIMATES:
        raise InputError(
            f"frozen stats: estimate must be 'auto', 'whole' or 'crops', got {stats!r}"
        )
    return stats


# ---- "auto": the estimate a model's recorded check chose --------------------------------------

CHECK_MIN_PSNR_DB = 47.0  # crops kept when the check frame gives >= this: 45 dB + 2 dB margin
CHECK_SCHEMA = "1"
CHECK_HINT = "cyclesr export check {d}"  # re-runs the check alone


class EstimateChoice(NamedTuple):
    estimate: str  # "crops" or "whole"
    reason: str  # for the log
    warn: bool  # the folder's check is unusable (unreadable, other weights)

    def log(self, where: str) -> None:
        """Log the choice: a warning when the folder's check was unusable, else info."""
        log.log(logging.WARNING if self.warn else logging.INFO, "%s: %s", where, self.reason)


def estimate_for_model(model_dir: str | Path, stats: str = "auto") -> EstimateChoice:
    """:class:`EstimateChoice`: the statistics estimate ``"crops"`` or ``"whole"`` that frozen
    tiling uses for ``model_dir``. ``stats`` other than ``"auto"`` is returned as given;
    ``"auto"`` follows the folder's :data:`FROZEN_CHECK` (written at export: the crops estimate
    against whole-frame inference on check frames, :mod:`cyclesr_deploy.export.frozen_check`):
    ``"crops"`` when its lowest PSNR reaches :data:`CHECK_MIN_PSNR_DB`, else ``"whole"``; also
    ``"crops"`` when the folder has no check, an unreadable one, or one made for other files
    (weights, statistics or tile graph) than the folder's: the reason says which and how to
    redo it. Reads the record and hashes the files it names (a few ms per MB): call it once per
    run, not per frame."""
    model_dir = Path(model_dir)
    if _check_estimate(stats) != "auto":
        return EstimateChoice(stats, f"--stats {stats}", False)
    path = model_dir / FROZEN_CHECK
    redo = f"check it with `{CHECK_HINT.format(d=model_dir)}`"
    if not path.is_file():
        return EstimateChoice(
            "crops", f"no {FROZEN_CHECK}: crops estimate unchecked ({redo})", False
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("schema_version") != CHECK_SCHEMA:
            raise ValueError(f"schema_version {record.get('schema_version')!r}")
        psnr = float(record["psnr_db"])
        files = dict(record["files"])
        present = {f: sha for f, sha in files.items() if (model_dir / f).is_file()}
        folder = ModelFolder(model_dir)
        changed = [f for f, sha in present.items() if folder.digest(f) != sha]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return EstimateChoice("crops", f"{path} is unreadable ({exc}); {redo}", True)
    if changed or not present:
        what = ", ".join(changed) if changed else "none of its files is in the folder"
        return EstimateChoice("crops", f"{path} was made for other files ({what}); {redo}", True)
    choice = "crops" if psnr >= CHECK_MIN_PSNR_DB else "whole"
    why = f"{FROZEN_CHECK}: crops estimate {psnr:.1f} dB vs whole frame on its check frames"
    return EstimateChoice(choice, f"{why} (keep >= {CHECK_MIN_PSNR_DB:g} dB) -> {choice}", False)


def crop_batch(frame_nchw: np.ndarray, size_multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """The default crops (:func:`crops_for`, ``"spread"`` grid) of a padded (1, C, H, W) frame
    as one (n, C, crop, crop) float32 batch, and their :func:`calibration_weights`
    (n, BLOCKS, BLOCKS) float32 (numpy, torch-free)."""
    h, w = frame_nchw.shape[-2:]
    crop, n = crops_for((h, w), size_multiple)
    ch, cw = min(crop, h), min(crop, w)
    origins = crop_origins((h, w), (ch, cw), n, size_multiple)
    batch = np.ascontiguousarray(
        np.concatenate([frame_nchw[:, :, y : y + ch, x : x + cw] for y, x in origins]),
        dtype=np.float32,
    )
    weights = calibration_weights(frame_nchw[0], origins, (ch, cw)).astype(np.float32)
    return batch, weights


def padded_weights(weights: np.ndarray, crops: int = MAX_CROPS, blocks: int = BLOCKS) -> np.ndarray:
    """``weights`` (n,) per crop or (n, blocks, blocks) per sub-block, as the stats graph's
    static ``(crops, blocks, blocks)`` input: a crop's weight is repeated over its blocks,
    crops n.. are zero (unused)."""
    weights = np.asarray(weights, dtype=np.float32)
    n = weights.shape[0] if weights.ndim else 1
    if n > crops:
        raise InputError(f"frozen stats: {n} crops; the stats graph takes <= {crops}")
    if weights.ndim <= 1:
        weights = np.broadcast_to(weights.reshape(n, 1, 1), (n, blocks, blocks))
    if weights.shape[1:] != (blocks, blocks):
        raise InputError(
            f"frozen stats: weights of shape {weights.shape}, the stats graph takes "
            f"(n, {blocks}, {blocks})"
        )
    out = np.zeros((crops, blocks, blocks), dtype=np.float32)
    out[:n] = weights
    return out


def _check_stats(stats: np.ndarray, length: int) -> np.ndarray:
    stats = np.ascontiguousarray(stats, dtype=np.float32).reshape(-1)
    if stats.shape != (length,):
        raise InputError(f"frozen stats: {stats.shape[0]} values, the generator needs {length}")
    return stats
