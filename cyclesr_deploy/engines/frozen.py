"""Engines with frozen frame-level InstanceNorm statistics (seam-free tiling).

Both implement :class:`~cyclesr_deploy.engines.base.FrozenStatsEngine`: the pipeline computes
the statistics of each whole (normalized, size-multiple padded) frame once with
``frame_statistics`` and runs every tile batch of that frame with ``infer_with_stats``. With a
halo >= the receptive-field half-width the tiled output then equals whole-frame inference up to
float rounding (:mod:`cyclesr_deploy.frozen_norm`).

* :class:`OnnxFrozenEngine`: two ONNX Runtime sessions, ``generator.stats.onnx`` (frame ->
  stats) and ``generator.tile.onnx`` (tiles, stats -> output), written by
  :mod:`cyclesr_deploy.export.frozen_onnx`; FP32.
* :class:`TorchFrozenEngine`: :class:`~cyclesr_deploy.engines.torch_engine.TorchEngine` with its
  InstanceNorms swapped for :class:`~cyclesr_deploy.frozen_norm.FrozenInstanceNorm`.

``infer`` (no statistics given) is plain InstanceNorm inference, sample by sample, so both are
complete engines for whole-frame runs too. :func:`open_frozen_engine` picks one for a backend.

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
whole-frame pass). ONNX Runtime pools crops with a stats graph exported with pooling (metadata
``pooled``) and weights them when it has the ``weights`` input (``weighted``); an older stats
graph pools them equally, or gets the whole frame (logged once).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.engines.onnxruntime_engine import CPU_EP, resolve_providers
from cyclesr_deploy.engines.torch_engine import TorchEngine
from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.model import ONNX_FILES, WEIGHTS, load_model

StatsEstimate = Literal["auto", "whole", "crops"]
STATS_ESTIMATES: tuple[str, ...] = ("auto", "whole", "crops")

__all__ = [
    "BLOCKS",
    "CHECK_FILE",
    "CHECK_MIN_PSNR_DB",
    "CROP_AREA",
    "MAX_CROPS",
    "STATS_ESTIMATES",
    "STATS_FILE",
    "TILE_FILE",
    "WEIGHTS_NAME",
    "OnnxFrozenEngine",
    "TorchFrozenEngine",
    "block_index",
    "calibration_weights",
    "crop_batch",
    "crop_origins",
    "crops_for",
    "estimate_for_model",
    "frozen_graphs_missing",
    "open_frozen_engine",
    "padded_weights",
]

log = logging.getLogger(__name__)

# the names of cyclesr_deploy.export.frozen_onnx (not imported: it imports torch and onnx)
STATS_FILE = "generator.stats.onnx"
TILE_FILE = "generator.tile.onnx"
_KEY_FROZEN_STATS = "cyclesr.frozen_stats"
EXPORT_HINT = "cyclesr export onnx {d} --overwrite"  # writes both graphs (--frozen default)


def frozen_graphs_missing(model_dir: str | Path) -> str | None:
    """None when ``model_dir`` has both frozen-statistics graphs, else a message saying how to
    export them."""
    model_dir = Path(model_dir)
    missing = [f for f in (STATS_FILE, TILE_FILE) if not (model_dir / f).is_file()]
    if not missing:
        return None
    return (
        f"{model_dir} has no {' / '.join(missing)} (the frozen InstanceNorm graphs); export them "
        f"with: {EXPORT_HINT.format(d=model_dir)}"
    )


# ---- crop geometry of the "crops" estimate (torch-free; cyclesr_deploy.frozen_norm uses it) ----

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

CHECK_FILE = "frozen_stats.json"  # written by cyclesr_deploy.export.frozen_check (export onnx)
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
    ``"auto"`` follows the folder's :data:`CHECK_FILE` (written at export: the crops estimate
    against whole-frame inference on check frames, :mod:`cyclesr_deploy.export.frozen_check`):
    ``"crops"`` when its lowest PSNR reaches :data:`CHECK_MIN_PSNR_DB`, else ``"whole"``; also
    ``"crops"`` when the folder has no check, an unreadable one, or one made for other files
    (weights, statistics or tile graph) than the folder's: the reason says which and how to
    redo it. Reads the record and hashes the files it names (a few ms per MB): call it once per
    run, not per frame."""
    model_dir = Path(model_dir)
    if _check_estimate(stats) != "auto":
        return EstimateChoice(stats, f"--stats {stats}", False)
    path = model_dir / CHECK_FILE
    redo = f"check it with `{CHECK_HINT.format(d=model_dir)}`"
    if not path.is_file():
        return EstimateChoice("crops", f"no {CHECK_FILE}: crops estimate unchecked ({redo})", False)
    from cyclesr_deploy.export.report import file_digest  # torch-free

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("schema_version") != CHECK_SCHEMA:
            raise ValueError(f"schema_version {record.get('schema_version')!r}")
        psnr = float(record["psnr_db"])
        files = dict(record["files"])
        present = {f: sha for f, sha in files.items() if (model_dir / f).is_file()}
        changed = [f for f, sha in present.items() if file_digest(model_dir / f)[1] != sha]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return EstimateChoice("crops", f"{path} is unreadable ({exc}); {redo}", True)
    if changed or not present:
        what = ", ".join(changed) if changed else "none of its files is in the folder"
        return EstimateChoice("crops", f"{path} was made for other files ({what}); {redo}", True)
    choice = "crops" if psnr >= CHECK_MIN_PSNR_DB else "whole"
    why = f"{CHECK_FILE}: crops estimate {psnr:.1f} dB vs whole frame on its check frames"
    return EstimateChoice(choice, f"{why} (keep >= {CHECK_MIN_PSNR_DB:g} dB) -> {choice}", False)


def _resolve(engine: Any, stats: str | None) -> str:
    """The estimate an engine uses for ``stats`` (default ``engine.stats``): ``"auto"``
    resolved once per engine by :func:`estimate_for_model` (logged)."""
    stats = _check_estimate(stats or engine.stats)
    if stats != "auto":
        return stats
    if engine._auto is None:
        engine._auto = estimate_for_model(engine.model_dir)
        engine._auto.log(f"frozen statistics ({engine.model_dir})")
    return engine._auto.estimate


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


class OnnxFrozenEngine:
    """ONNX Runtime on ``generator.stats.onnx`` + ``generator.tile.onnx`` of ``model_dir``.

    Args:
        model_dir: model folder with the two graphs (see :func:`frozen_graphs_missing`).
        providers: as :class:`~cyclesr_deploy.engines.OnnxRuntimeEngine` (default ``"cpu"``).
        threads: intra-op threads per session (None: ONNX Runtime's default).

    Buffer contract: every call returns a new array.
    """

    selection: Any = None

    def __init__(
        self,
        model_dir: str | Path,
        *,
        providers: str | Sequence[str] = "cpu",
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir)
        missing = frozen_graphs_missing(self.model_dir)
        if missing:
            raise InputError(missing)
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        self.ort = require("onnxruntime", "cpu", "ONNX Runtime inference (or the 'gpu' extra)")
        self.requested = resolve_providers(providers, list(self.ort.get_available_providers()))
        self.threads = threads
        self.input_spec = TensorSpec(
            name="input",
            shape=(None, self.model.generator.in_channels, None, None),
            dtype=np.dtype(np.float32),
            size_multiple=self.model.size_multiple,
            scale=self.model.scale,
        )
        self.name = f"onnxruntime[{self.requested[0]},frozen-stats]"
        self.length: int | None = None
        self.stats: StatsEstimate = "auto"
        self._auto: EstimateChoice | None = None
        self.pooled = False
        self._warned = False
        self._weights_shape: tuple[int, ...] | None = None
        self._stats: Any = None
        self._tile: Any = None
        self._plain: Any = None

    def __enter__(self) -> OnnxFrozenEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _session(self, path: Path) -> Any:
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.inter_op_num_threads = 1
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=self.requested)
        except Exception as exc:  # onnxruntime's own exception types
            raise InputError(f"onnx: ONNX Runtime cannot load {path} ({exc})") from exc

    def open(self) -> None:
        """Create both sessions (idempotent) and check that their statistics layouts agree."""
        if self._tile is not None:
            return
        stats = self._session(self.model_dir / STATS_FILE)
        tile = self._session(self.model_dir / TILE_FILE)
        infos = []
        for path, sess in ((STATS_FILE, stats), (TILE_FILE, tile)):
            props = dict(sess.get_modelmeta().custom_metadata_map)
            if _KEY_FROZEN_STATS not in props:
                raise InputError(f"onnx: {self.model_dir / path} has no {_KEY_FROZEN_STATS}")
            infos.append(json.loads(props[_KEY_FROZEN_STATS]))
        if infos[0].get("length") != infos[1].get("length"):
            raise InputError(
                f"{self.model_dir}: {STATS_FILE} and {TILE_FILE} disagree on the statistics "
                f"length ({infos[0].get('length')} vs {infos[1].get('length')}); re-export both"
            )
        self.length = int(infos[0]["length"])
        self.pooled = bool(infos[0].get("pooled", False))
        stats_inputs = {i.name: i for i in stats.get_inputs()}
        self._stats_in = next(n for n in stats_inputs if n != WEIGHTS_NAME)
        weights = stats_inputs.get(WEIGHTS_NAME)
        self._weights_shape = tuple(int(d) for d in weights.shape) if weights is not None else None
        names = [i.name for i in tile.get_inputs()]
        self._tile_in = next(n for n in names if n != "stats")
        self._stats, self._tile = stats, tile
        self.name = f"onnxruntime[{tile.get_providers()[0]},frozen-stats]"
        log.info("ONNX Runtime frozen-stats sessions for %s", self.model_dir)

    def close(self) -> None:
        self._stats = self._tile = self._plain = None

    def _require_open(self) -> None:
        if self._tile is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")

    def frame_statistics(self, frame_nchw: np.ndarray, stats: str | None = None) -> np.ndarray:
        """Statistics of a padded (1, C, H, W) frame, estimated as ``stats`` (default
        ``self.stats``) says."""
        self._require_open()
        x = np.ascontiguousarray(frame_nchw, dtype=np.float32)
        weights = np.ones(1, dtype=np.float32)  # one frame
        if _resolve(self, stats) == "crops":
            if self.pooled:
                x, weights = crop_batch(x, self.model.size_multiple)
            if self._weights_shape is None and not self._warned:
                self._warned = True
                log.warning(
                    "%s predates %s: frozen statistics from %s (re-export it with "
                    "`cyclesr export onnx --overwrite` for the calibrated crops estimate)",
                    self.model_dir / STATS_FILE,
                    "calibrated crop weights" if self.pooled else "pooled statistics",
                    "uniformly pooled crops" if self.pooled else "the whole frame",
                )
        feeds = {self._stats_in: x}
        if self._weights_shape is not None:
            crops, blocks = self._weights_shape[0], self._weights_shape[-1]
            feeds[WEIGHTS_NAME] = padded_weights(weights, crops, blocks)
        return self._stats.run(None, feeds)[0]

    def infer_with_stats(self, batch: np.ndarray, stats: np.ndarray) -> np.ndarray:
        self._require_open()
        assert self.length is not None
        feeds = {self._tile_in: batch, "stats": _check_stats(stats, self.length)}
        return self._tile.run(None, feeds)[0]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Plain InstanceNorm inference (each sample normalised with its own statistics), e.g.
        for frames that run whole: one pass of ``generator.onnx`` when the folder has it (the
        same network; no statistics pass), else the two graphs per sample."""
        self._require_open()
        plain = self.model_dir / ONNX_FILES["ab"]
        if self._plain is None and plain.is_file():
            self._plain = self._session(plain)
            self._plain_in = self._plain.get_inputs()[0].name
        if self._plain is not None:
            return self._plain.run(None, {self._plain_in: np.ascontiguousarray(batch)})[0]
        return np.concatenate(
            [
                self.infer_with_stats(
                    batch[i : i + 1], self.frame_statistics(batch[i : i + 1], "whole")
                )
                for i in range(batch.shape[0])
            ]
        )

    def __repr__(self) -> str:
        state = "open" if self._tile is not None else "closed"
        return f"OnnxFrozenEngine({str(self.model_dir)!r}, {self.name}, {state})"


class TorchFrozenEngine(TorchEngine):
    """:class:`~cyclesr_deploy.engines.TorchEngine` (same arguments and buffer contract) whose
    InstanceNorms are :class:`~cyclesr_deploy.frozen_norm.FrozenInstanceNorm`: ``infer`` runs
    them in mode ``"instance"``, ``infer_with_stats`` in mode ``"frozen"``."""

    def __init__(self, model_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        self.name = self.name[:-1] + ",frozen-stats]"
        self.stats: StatsEstimate = "auto"
        self._auto: EstimateChoice | None = None
        self._layers: list[Any] = []

    def _load_network(self) -> Any:
        from cyclesr_deploy.frozen_norm import freeze_instance_norms

        net = super()._load_network()
        self._layers = freeze_instance_norms(net)
        if not self._layers:
            raise InputError(
                f"{self.model_dir}: the generator has no InstanceNorm layers; frozen statistics "
                "do not apply (tile it with --tiling naive: it is already exact)"
            )
        return net

    def frame_statistics(self, frame_nchw: np.ndarray, stats: str | None = None) -> np.ndarray:
        """Statistics of a padded (1, C, H, W) frame, estimated as ``stats`` (default
        ``self.stats``) says."""
        from cyclesr_deploy.frozen_norm import compute_statistics

        if self._module is None:
            raise RuntimeError(f"{self.name} is closed; use it inside a with block")
        x = self._t.from_numpy(np.ascontiguousarray(frame_nchw, dtype=np.float32))
        # the frame is already padded to the size multiple: nothing more is padded
        m = self.model.size_multiple
        packed = compute_statistics(self._net, x, _resolve(self, stats), size_multiple=m)
        return packed.cpu().numpy()

    def infer_with_stats(self, batch: np.ndarray, stats: np.ndarray) -> np.ndarray:
        from cyclesr_deploy.frozen_norm import load_packed, packed_length, set_mode

        load_packed(self._layers, _check_stats(stats, packed_length(self._layers)))
        set_mode(self._layers, "frozen")
        try:
            return self.infer(batch)
        finally:
            set_mode(self._layers, "instance")


def open_frozen_engine(
    model_dir: str | Path,
    backend: Literal["auto", "onnxruntime", "torch", "tensorrt"] | str = "auto",
    *,
    precision: str = "auto",
    threads: int | None = None,
    stats: StatsEstimate = "auto",
    frames: Sequence[tuple[int, int]] = (),
) -> Any:
    """A frozen-statistics engine for ``model_dir`` (not entered): ``tensorrt`` needs the two
    TensorRT engines (:mod:`cyclesr_deploy.engines.tensorrt_frozen`; statistics always from the
    whole frame), ``onnxruntime`` the two graphs (:func:`frozen_graphs_missing`), ``torch`` the
    weights; ``auto`` prefers ONNX Runtime on the CPU when the graphs exist, else torch.
    ``frames``: the (H, W) sizes to come, which the TensorRT statistics engine must hold.
    InputError when neither can run (the message says how to export the graphs); ONNX Runtime
    and TensorRT run FP32 only."""
    model_dir = Path(model_dir)
    missing = frozen_graphs_missing(model_dir)
    has_weights = (model_dir / WEIGHTS["ab"]).is_file()
    if backend == "tensorrt":
        from cyclesr_deploy.engines.tensorrt_frozen import TensorRTFrozenEngine

        if precision not in ("auto", "fp32"):
            raise InputError("frozen statistics with TensorRT run fp32 only")
        trt_engine = TensorRTFrozenEngine(model_dir, frames=frames)
        trt_engine.selection = "frozen InstanceNorm statistics: TensorRT stats + tile engines"
        return trt_engine
    if backend not in ("auto", "onnxruntime", "torch"):
        raise InputError(
            f"--tiling frozen: backend {backend!r} has no frozen-statistics engine; use "
            "tensorrt, onnxruntime or torch (or --tiling naive)"
        )
    if backend == "auto":
        if missing is None and precision in ("auto", "fp32"):
            backend = "onnxruntime"
        elif has_weights:
            backend = "torch"
        else:
            raise InputError(missing or f"{model_dir}: no frozen-statistics engine for fp16")
    if backend == "onnxruntime":
        if precision not in ("auto", "fp32"):
            raise InputError("frozen statistics with ONNX Runtime run fp32 only")
        engine: OnnxFrozenEngine | TorchFrozenEngine = OnnxFrozenEngine(
            model_dir, providers=[CPU_EP], threads=threads
        )
        engine.selection = "frozen InstanceNorm statistics: generator.stats/tile.onnx"
        engine.stats = _check_estimate(stats)  # type: ignore[assignment]
        return engine
    kwargs: dict[str, Any] = {"threads": threads}
    if precision != "auto":
        kwargs["precision"] = precision
    engine = TorchFrozenEngine(model_dir, **kwargs)
    engine.selection = "frozen InstanceNorm statistics: PyTorch generator"
    engine.stats = _check_estimate(stats)  # type: ignore[assignment]
    return engine
