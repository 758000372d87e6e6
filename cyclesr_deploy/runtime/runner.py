"""The one frame runner: every door into the runtime turns a frame into its enhanced frame here.

``cyclesr enhance`` (the staged pipeline), ``cyclesr watch``, the Python :class:`Enhancer`,
``cyclesr bench latency`` and the demo all hand frames to a :class:`FrameRunner`, so a
frame's result depends on the settings only, never on the entry point::

    runner = FrameRunner(engine, model, EnhanceConfig(...))   # validated once, estimate resolved
    hr = runner(lr)                                          # (H, W) -> (H*s, W*s), same dtype

One frame at a time (:meth:`FrameRunner.__call__`) or in stages for a pipeline that overlaps
them in threads (the same code, in the same order)::

    work = runner.start(frame, index)      # plan (cached per shape), intensity mapping
    for batch in work.batches():           # gather + normalize the tiles of this frame
        work.add(batch, runner.infer(work, batch))   # engine (frozen statistics), blend
    hr = work.result()                     # back to the input dtype (clip, round)
    work.trust                             # its FrameTrust (None: unscored); runner.run(lr)
                                           # returns (hr, trust) in one call

The plan of a frame shape (:meth:`FrameRunner.plan`) is one of: ``whole`` (one tile covers the
padded frame, or ``auto`` runs an InstanceNorm generator's frame whole within
``whole_max_px``), ``frozen`` (tiles normalised with the whole frame's InstanceNorm statistics:
seam-free), ``tiles`` (independent tiles: exact for generators without InstanceNorm, ``naive``
seams for those with it, warned once). A batch holds the tiles of one frame only, so a frame's
output never depends on the frames around it (bit-identical whichever door it came through).

Per-frame trust (issue 17): with a scorer (the model folder's ``trust.json``, resolved once by
:func:`~cyclesr_deploy.runtime.trust_policy.resolve_scorer`; ``EnhanceConfig.trust``), a
frame's input statistics are taken in ``start`` and its :class:`~cyclesr_deploy.trust.FrameTrust`
in ``result``; what a file's untrusted frames get is the doors' business
(:mod:`cyclesr_deploy.runtime.trust_policy`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cyclesr_deploy.engines.base import (
    Engine,
    FrozenStatsEngine,
    TensorSpec,
    check_batch_shape,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.normalization import IntensityMapping
from cyclesr_deploy.runtime.tile_size import (
    WHOLE_MAX_PX,
    TileBudget,
    describe,
    tile_budget,
    trimmed_tile,
)
from cyclesr_deploy.runtime.tiling import (
    BLENDS,
    Blender,
    TilePlan,
    TilingConfig,
    gather_batches,
    plan_tiles,
)
from cyclesr_deploy.runtime.trust_policy import resolve_scorer

if TYPE_CHECKING:
    from cyclesr_deploy.trust import FrameTrust, TrustScorer

__all__ = [
    "DTYPES",
    "WHOLE_MAX_PX",
    "EnhanceConfig",
    "FramePlan",
    "FrameRunner",
    "FrameWork",
    "TileBatch",
    "fit_to_engine",
]

log = logging.getLogger(__name__)

DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


class EnhanceConfig(BaseModel):
    """Settings of how frames are enhanced (and of one ``enhance`` run); validated once, saved
    into the manifest.

    ``tile``: tile side in input px (0: the whole frame as one tile, the only exact choice for
    InstanceNorm generators without frozen statistics; ``"auto"``, the default: sized to the
    machine, see :mod:`cyclesr_deploy.runtime.tile_size`: the largest tile within the memory
    budget of one engine call and the engine, trimmed per frame shape to the same number of
    tiles, the batch lowered to stay within the budget; logged with the overlap fraction it
    implies); ``overlap``: between tiles, in input px
    (None: from the model's receptive field, ``TilingConfig.for_model``); ``batch``: tiles per
    engine call (tiles of one frame); ``normalize``: ``model`` = the model's dataset
    percentiles, ``frame`` = percentiles of each whole frame (mapped back to the same range);
    ``overwrite``, ``queue_size`` (items between pipeline stages) and ``bigtiff`` (None = above
    2 GiB) concern files, not frames.

    ``trust``: score every frame against the model folder's trust calibration (``trust.json``,
    ``cyclesr export trust``; a model without one runs unscored, said once); ``untrusted``: what
    a file's untrusted frames get (``warn``, ``mark``, ``skip``, ``fail``: see
    :mod:`cyclesr_deploy.runtime.trust_policy`; all but ``warn`` need a calibration).

    ``tiling_mode`` (InstanceNorm generators cut into several tiles): ``frozen`` = every tile
    normalised with the whole frame's statistics (seam-free, exact up to float rounding; needs an
    engine with the :class:`~cyclesr_deploy.engines.base.FrozenStatsEngine` capability);
    ``naive`` = each tile normalised with its own statistics (brightness differences between
    tiles; warned); ``auto`` = for InstanceNorm generators a frame of at most ``whole_max_px``
    pixels (padded; engines with dynamic H, W) runs whole, one frame per call (exact: no tiling
    at all); a larger frame is tiled, ``frozen`` when the engine supports it, else ``naive``
    with a one-time warning. A frame that fits one tile runs whole in every mode.

    ``whole_max_px``: the ``auto`` memory budget of whole-frame inference, in pixels per frame
    (default 2048 x 2048 = 4.2 MP: fp32 activations of the canonical ngf-64 generator take
    ~1 KB per pixel, ~4 GiB; 0 = always tile). ``stats``: how frozen tiling estimates a frame's
    statistics: ``crops`` = a statistics pass over a batch of crops (~20 % of the frame, pooled
    with calibrated sub-block weights; ~0.1-0.15x the tile pass's time, memory bounded by the
    crops; PSNR against whole-frame inference 47-51 dB on the reference model at 1024^2 and
    2048^2, ~40 dB on a random canonical network, see benchmarks/results/frozen_norm.md),
    ``whole`` = over the whole frame (exact: tiled == whole frame up to float rounding, but the
    time and memory of a whole-frame pass), ``auto`` (default) = what the model folder's
    estimate check chose (``frozen_stats.json``, written by ``cyclesr export onnx`` or ``cyclesr
    export check``: crops where they reproduced its check frames with at least 47 dB, else whole
    for frames within ``whole_max_px`` and crops, with a warning, above; crops when the folder
    has no check). The run's choice is logged and written to the manifest.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile: Annotated[int, Field(ge=0, le=65536)] | Literal["auto"] = "auto"
    overlap: int | None = Field(default=None, ge=0, le=65536)
    batch: int = Field(default=4, ge=1, le=4096)
    blend: Literal["cosine", "gaussian", "constant", "crop"] = "cosine"
    normalize: Literal["model", "frame"] = "model"
    overwrite: bool = False
    queue_size: int = Field(default=2, ge=1, le=64)
    bigtiff: bool | None = None
    tiling_mode: Literal["auto", "frozen", "naive"] = "auto"
    whole_max_px: int = Field(default=WHOLE_MAX_PX, ge=0)
    stats: Literal["auto", "crops", "whole"] = "auto"
    # tile "auto": its budget, px per engine call, once settled (None: the frame runner measures
    # it, whole_max_px lowered to the free memory, and records it in its cfg, so manifests say
    # it; the cluster client settles it so that every worker uses the same tiles)
    tile_budget_px: int | None = Field(default=None, ge=1)
    # files (OME-Zarr, issue 16): the output format (same as the input, tiff or zarr) and the
    # pyramid levels of a Zarr output (each 2x smaller, from the stored full resolution)
    output_format: Literal["same", "tiff", "zarr"] = "same"
    pyramid: int = Field(default=0, ge=0, le=16)
    # per-frame trust (issue 17, runtime/trust_policy.py): score frames against the model
    # folder's trust.json (``trust``), and what a file's untrusted frames get (``untrusted``)
    trust: bool = True
    untrusted: Literal["warn", "mark", "skip", "fail"] = "warn"

    def tiling(self, model: ModelConfig, frame_shape: Sequence[int] | None = None) -> TilingConfig:
        """The tiling for ``model``: ``tile > 0`` from its receptive field (``overlap``
        overriding), ``tile == 0`` one tile of the (size-multiple padded) ``frame_shape``;
        ``"auto"``: the largest tile of the budget (:meth:`tile_budget`; the frame runner trims
        it per frame shape)."""
        m, s = model.size_multiple, model.scale
        if self.tile == "auto":
            side = self.tile_budget(model).side
            return self.model_copy(update={"tile": side}).tiling(model, frame_shape)
        if self.tile == 0:
            if frame_shape is None:
                raise InputError("tile 0 (whole frame) needs the frame shape")
            tile = tuple(-(-int(n) // m) * m for n in frame_shape[-2:])
            return TilingConfig(
                tile=tile,
                overlap=0,
                size_multiple=m,
                scale=s,
                blend=self.blend,
                halo=0,
                batch_size=self.batch,
            )
        if self.tile % m:
            raise InputError(
                f"--tile {self.tile}: must be a multiple of the model's size multiple {m} "
                f"(e.g. {max(m, self.tile // m * m)})"
            )
        if self.overlap is None:
            return TilingConfig.for_model(
                model.receptive_field, m, s, self.tile, self.batch, self.blend
            )
        halo = min(math.ceil(model.receptive_field / 2) + 1, self.overlap // 2)
        return TilingConfig(
            tile=self.tile,
            overlap=self.overlap,
            size_multiple=m,
            scale=s,
            blend=self.blend,
            halo=halo,
            batch_size=self.batch,
        )

    def tile_budget(self, model: ModelConfig, spec: TensorSpec | None = None) -> TileBudget:
        """``tile="auto"``: the largest tile within ``whole_max_px`` per engine call, the free
        memory and the engine (:func:`~cyclesr_deploy.runtime.tile_size.tile_budget`)."""
        return tile_budget(model, self.whole_max_px, spec, settled=self.tile_budget_px)

    @property
    def engine_tiling(self) -> str:
        """What the run asks of the engine factory (``open_engine(..., tiling=)``): ``none``
        for whole frames (tile 0 with ``auto``/``naive``), else the tiling mode (``frozen``
        needs a frozen-statistics engine even at tile 0: the runner refuses it otherwise)."""
        return self.tiling_mode if self.tile or self.tiling_mode == "frozen" else "none"


assert set(BLENDS) == {"cosine", "gaussian", "constant", "crop"}  # EnhanceConfig.blend in sync


def fit_to_engine(cfg: EnhanceConfig, spec: TensorSpec) -> EnhanceConfig:
    """Adapt tile and batch to an engine with fixed limits (a static TensorRT engine): the
    batch is capped at ``max_batch`` and a tiled run uses the engine's tile when the requested
    one exceeds ``max_tile`` (or when the engine accepts one tile size only). Logged; engines
    without limits (ONNX Runtime, PyTorch) leave ``cfg`` unchanged."""
    update: dict[str, int] = {}
    if spec.max_batch is not None and cfg.batch > spec.max_batch:
        update["batch"] = spec.max_batch
    if cfg.tile and cfg.tile != "auto" and spec.max_tile is not None:
        max_h, max_w = spec.max_tile
        fixed = spec.min_tile is not None and tuple(spec.min_tile) == tuple(spec.max_tile)
        if max_h == max_w and (cfg.tile > max_h or (fixed and cfg.tile != max_h)):
            update["tile"] = max_h
    if update:
        log.info(
            "adapted to the engine's limits: %s", ", ".join(f"{k} {v}" for k, v in update.items())
        )
        return cfg.model_copy(update=update)
    return cfg


Mode = Literal["whole", "frozen", "tiles"]


@dataclass(frozen=True, eq=False)
class FramePlan:
    """How frames of one shape run: ``mode`` (see the module docstring), the tile plan,
    ``batch`` tiles per engine call, and for ``frozen`` the untiled plan of the padded frame
    that the statistics are taken on."""

    mode: Mode
    tiles: TilePlan
    batch: int
    stats: TilePlan | None = None
    _blenders: list[Blender] = field(default_factory=list, repr=False)  # idle, reused


@dataclass(eq=False)
class TileBatch:
    """Normalized tiles of one frame, as the engine gets them: ``data`` (batch, C, th, tw),
    of which the first ``len(tiles)`` slots are used (the rest zero for fixed-batch engines);
    ``stats_input``: the frame's first batch under ``frozen``, the whole normalized padded
    frame (1, C, H, W) that the statistics are computed on."""

    data: np.ndarray
    tiles: range
    stats_input: np.ndarray | None = None


class FrameWork:
    """One frame in flight through a :class:`FrameRunner` (made by :meth:`FrameRunner.start`):
    its plan, intensity mapping and blender; ``batches`` in the prep stage, ``add`` after the
    engine, ``result`` once ``complete``."""

    __slots__ = (
        "_blender",
        "_scorer",
        "_trust_in",
        "dtype",
        "frame",
        "index",
        "mapping",
        "plan",
        "stats",
        "trust",
    )

    def __init__(
        self,
        frame: np.ndarray,
        index: int,
        plan: FramePlan,
        mapping: IntensityMapping,
        scorer: TrustScorer | None = None,
    ):
        self.frame, self.index, self.plan, self.mapping = frame, index, plan, mapping
        self.dtype = frame.dtype
        self.stats: np.ndarray | None = None  # frozen: set by the engine stage, first batch
        # trust: the input's statistics now (before the input is freed), the verdict at result()
        self._scorer = scorer
        self._trust_in = (
            None if scorer is None else scorer.begin(frame, mapping.low_in, mapping.high_in)
        )
        self.trust: FrameTrust | None = None
        pool = plan._blenders
        try:
            self._blender = pool.pop()
        except IndexError:
            self._blender = Blender(plan.tiles)
        self._blender.start()

    def batches(self) -> Iterator[TileBatch]:
        """The tiles of the frame, gathered and normalized into fresh batches of
        ``plan.batch`` (a fixed-batch engine runs the unused slots too: zeros)."""
        plan, x = self.plan, self.frame[None]
        stats_input = None
        if plan.stats is not None:  # frozen: statistics of the whole normalized, padded frame
            stats_input = np.empty((1, x.shape[0], *plan.stats.tile_shape), np.float32)
            plan.stats.read_tile(x, 0, stats_input[0])
            self.mapping.before(stats_input, out=stats_input)
        last = len(plan.tiles.tiles)

        def normalize(view: np.ndarray) -> None:
            self.mapping.before(view, out=view)

        for data, tiles in gather_batches(x, plan.tiles, plan.batch, transform=normalize):
            if tiles.stop == last:
                self.frame = None  # type: ignore[assignment]  # gathered: free the input
            yield TileBatch(data, tiles, stats_input)
            stats_input = None

    def add(self, batch: TileBatch, output: np.ndarray) -> None:
        """Blend the engine's ``output`` (n, C, th*s, tw*s) for ``batch`` (copied at once)."""
        for slot, t in enumerate(batch.tiles):
            self._blender.add(t, output[slot])

    @property
    def complete(self) -> bool:
        return self._blender.complete

    def result(self) -> np.ndarray:
        """The enhanced frame (H*s, W*s) in the input's dtype (integers clipped, rounded)."""
        y = self._blender.result()[0]
        self.plan._blenders.append(self._blender)
        out = self.mapping.after(y, self.dtype, inplace=True)
        if self._scorer is not None and self._trust_in is not None:
            m = self.mapping
            self.trust = self._scorer.finish(self._trust_in, out, m.low_out, m.high_out)
            self._trust_in = None
        return out


class FrameRunner:
    """``runner(frame)``: one (H, W) uint8/uint16/float32 frame -> the enhanced (H*s, W*s)
    frame of the same dtype, with ``engine`` (already entered). Validated once here: scale,
    channels, tiling against the engine's limits, frozen statistics; plans are cached per frame
    shape. ``start``/``infer`` are the stages of the same work for pipelines. One runner per
    engine; calls into the engine must not overlap (one engine thread)."""

    def __init__(
        self,
        engine: Engine,
        model: ModelConfig,
        cfg: EnhanceConfig | None = None,
        *,
        scorer: TrustScorer | Literal["auto"] | None = "auto",
    ):
        spec = engine.input_spec
        if spec.scale != model.scale:
            raise InputError(
                f"engine {engine.name} upscales x{spec.scale} but the model config says "
                f"x{model.scale}"
            )
        if spec.channels != 1:
            raise InputError(f"the model takes {spec.channels} channels; only 1 is supported")
        cfg = fit_to_engine(cfg or EnhanceConfig(), spec)
        self.budget = cfg.tile_budget(model, spec) if cfg.tile == "auto" else None
        if self.budget is not None:  # settled: the manifest records it (cfg), results follow it
            cfg = cfg.model_copy(update={"tile_budget_px": self.budget.budget_px})
            log.info("tile auto: tiles up to %d px (%s)", self.budget.side, self.budget.reason)
        self.engine, self.model, self.cfg, self.spec = engine, model, cfg, spec
        self.frozen_capable = isinstance(engine, FrozenStatsEngine)
        if cfg.tiling_mode == "frozen" and not self.frozen_capable:
            raise InputError(
                f"tiling mode 'frozen': engine {engine.name} cannot run with frozen InstanceNorm "
                "statistics (open it with open_engine(..., tiling='frozen'), or use tiling "
                "'naive'/'auto')"
            )
        self.instance_norm = model.generator.norm == "instance"
        self._warned: set[str] = set()
        side = self.budget.side if self.budget is not None else int(cfg.tile)
        self.tile_side = side  # the tile (auto: the largest), px; 0: whole frames
        self.tiling = cfg.model_copy(update={"tile": side}).tiling(model) if side else None
        if self.tiling is not None and self.budget is not None:
            self.tiling = self._fit_overlap(self.tiling)
        if self.tiling is not None:
            batch = spec.shape[0] or cfg.batch
            check_batch_shape(spec, (batch, 1, *self.tiling.tile_shape), name="--tile/--batch")
        self.estimate = self._resolve_estimate()
        self.mapping = IntensityMapping.from_config(model.normalization)
        # the trust scorer (``auto``: the engine's model folder's trust.json; checked here, once)
        self.scorer = resolve_scorer(cfg, model, getattr(engine, "model_folder", None), scorer)
        self._plans: dict[tuple[int, int], FramePlan] = {}
        self._lock = threading.Lock()

    # --- settings resolved once -----------------------------------------------------------------
    def _resolve_estimate(self) -> Any:
        """For a run that may tile with frozen statistics on an engine that estimates them
        itself (``stats`` attribute: ONNX Runtime, torch), the estimate (``auto``: the model
        folder's check), resolved once, logged and set on the engine; None otherwise (TensorRT's
        statistics engine always sees the whole frame)."""
        cfg, engine = self.cfg, self.engine
        if not cfg.tile or cfg.tiling_mode == "naive" or not self.frozen_capable:
            return None
        model_dir = getattr(engine, "model_dir", None)
        if not hasattr(engine, "stats") or model_dir is None:
            return None
        from cyclesr_deploy.engines.frozen_stats import estimate_for_model

        choice = estimate_for_model(model_dir, cfg.stats)
        choice.log("frozen statistics")
        engine.stats = choice.estimate  # type: ignore[attr-defined]
        return choice

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def min_side(self) -> int:
        """Smallest frame side in px: padded to the size multiple it must reach two multiples,
        so that the innermost stage keeps the 2 px its reflection padding needs."""
        return self.model.size_multiple + 1

    # --- plans ---------------------------------------------------------------------------------
    def plan(self, shape: Sequence[int]) -> FramePlan:
        """The plan of frames of ``shape`` (H, W), made and validated once per shape."""
        key = (int(shape[-2]), int(shape[-1]))
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = self._plans[key] = self._make_plan(key)
        return plan

    def _make_plan(self, shape: tuple[int, int]) -> FramePlan:
        cfg, spec = self.cfg, self.spec
        if min(shape) < self.min_side:
            raise InputError(
                f"a {shape[0]} x {shape[1]} px frame is smaller than this model's minimum of "
                f"{self.min_side} x {self.min_side} px"
            )
        whole = self._whole_fits(shape)
        if whole or self.tiling is None:  # one tile of the padded frame
            tiling = cfg.model_copy(update={"tile": 0}).tiling(self.model, shape)
        elif self.budget is not None and not self._fixed_tile:  # auto: trimmed to this shape
            t, m = self.tiling, self.model.size_multiple
            least = max(spec.min_tile) if spec.min_tile is not None else 0  # the engine's floor
            trimmed = tuple(
                max(least, trimmed_tile(n, t.tile_shape[0], t.overlap, m)) for n in shape
            )
            tiling = replace(t, tile=trimmed) if min(trimmed) > t.overlap + m else t
        else:
            tiling = self.tiling
        tiles = plan_tiles(shape, tiling)
        if len(tiles.tiles) == 1:
            mode: Mode = "whole"
        elif self._frozen():
            mode = "frozen"
        else:
            mode = "tiles"
        batch = spec.shape[0] or (1 if whole else min(cfg.batch, len(tiles.tiles)))
        if self.budget is not None and not spec.shape[0] and len(tiles.tiles) > 1:
            th, tw = tiles.tile_shape
            batch = max(1, min(batch, self.budget.budget_px // (th * tw)))
            log.info(
                "%s; batch %d",
                describe(shape, tiles.tile_shape, len(tiles.tiles), tiling.overlap, self.budget),
                batch,
            )
        check_batch_shape(spec, (batch, spec.channels, *tiles.tile_shape), name=f"frame {shape}")
        if mode == "tiles" and cfg.tiling_mode == "naive" and self.instance_norm:
            self._warn_once(
                "naive",
                "--tiling naive: the tiles of a frame are normalised independently "
                "(InstanceNorm): brightness steps at tile borders are likely; use --tiling "
                "auto or frozen for seam-free output",
            )
        stats = None
        if mode == "frozen":
            untiled = cfg.model_copy(update={"tile": 0}).tiling(self.model, shape)
            stats = plan_tiles(shape, untiled)
        return FramePlan(mode, tiles, batch, stats)

    @property
    def _fixed_tile(self) -> bool:
        """Whether the engine takes one tile size only (a static TensorRT engine): the auto
        tile is then never trimmed below it."""
        lo, hi = self.spec.min_tile, self.spec.max_tile
        return lo is not None and hi is not None and tuple(lo) == tuple(hi)

    def _whole_fits(self, shape: tuple[int, int]) -> bool:
        """``auto``: whether a frame runs whole instead of tiled (see
        ``EnhanceConfig.whole_max_px``): InstanceNorm generator, tiles smaller than the frame,
        padded frame within the budget, an engine with dynamic H and W that accepts it."""
        cfg, spec = self.cfg, self.spec
        if cfg.tiling_mode != "auto" or not cfg.tile or not self.instance_norm:
            return False
        m = self.model.size_multiple
        h, w = (-(-n // m) * m for n in shape)
        if h <= self.tile_side and w <= self.tile_side:
            return False  # one tile already covers it
        limit = cfg.whole_max_px  # 0: always tile; auto tile: lowered to the free memory too
        if self.budget is not None:
            limit = min(limit, self.budget.budget_px)
        if h * w > limit or spec.shape[2] is not None or spec.shape[3] is not None:
            return False
        if spec.shape[0] not in (None, 1):
            return False  # a fixed batch > 1 would run mostly zero padding around one frame
        top = spec.max_tile
        return top is None or (h <= top[0] and w <= top[1])

    def _frozen(self) -> bool:
        """Whether tiles (more than one per frame) run with frozen frame statistics."""
        mode = self.cfg.tiling_mode
        if mode != "auto":
            return mode == "frozen"
        if not self.instance_norm:
            return False
        if not self.frozen_capable:
            self._warn_once(
                "naive",
                f"engine {self.engine.name} has no frozen InstanceNorm statistics: tiles are "
                "normalised independently (seams possible); use tile 0, or an engine with "
                "frozen statistics (--tiling frozen: TensorRT frozen engines, onnxruntime with "
                "generator.stats/tile.onnx, or torch)",
            )
            return False
        return True

    def _fit_overlap(self, tiling: TilingConfig) -> TilingConfig:
        """An auto tile too small for the receptive field's overlap (a tiny memory budget):
        the smallest tile that holds it, warned."""
        m = self.model.size_multiple
        least = (tiling.overlap // m + 1) * m
        if tiling.tile_shape[0] >= least:
            return tiling
        self._warn_once("budget", "tile auto: the budget allows tiles below the overlap")
        return replace(tiling, tile=least)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # --- one frame -----------------------------------------------------------------------------
    def start(self, frame: np.ndarray, index: int = 0) -> FrameWork:
        """Begin frame ``index``: its plan and intensity mapping (see :class:`FrameWork`)."""
        if frame.ndim != 2:
            raise InputError(f"a frame must be 2-D (H, W), got shape {frame.shape}")
        if frame.dtype not in DTYPES:
            raise InputError(f"dtype {frame.dtype} is not supported; use uint8, uint16 or float32")
        plan = self.plan(frame.shape)
        if self.cfg.normalize == "frame":
            norm = self.model.normalization
            mapping = IntensityMapping.from_frame(frame, norm.pmin, norm.pmax)
        else:
            mapping = self.mapping
        return FrameWork(frame, index, plan, mapping, self.scorer)

    def infer(self, work: FrameWork, batch: TileBatch) -> np.ndarray:
        """The engine's output for ``batch`` of ``work``, (n, C, th*s, tw*s) for its n tiles;
        under ``frozen`` the frame's statistics are computed with its first batch. The array
        may be reused by the engine's next call: blend or copy it before then."""
        engine, plan = self.engine, work.plan
        n = len(batch.tiles)
        x = batch.data if self.spec.shape[0] is not None else batch.data[:n]
        if plan.mode == "frozen":
            frozen = cast(FrozenStatsEngine, engine)
            if batch.stats_input is not None:
                work.stats = self._frame_statistics(frozen, batch.stats_input)
            assert work.stats is not None, "the first batch of a frame carries its statistics"
            y = frozen.infer_with_stats(x, work.stats)
        else:
            y = engine.infer(x)
        want = (x.shape[0], 1, *plan.tiles.tile_out_shape)
        if tuple(y.shape) != want:
            raise InputError(
                f"engine {engine.name}: returned shape {tuple(y.shape)} for input "
                f"{tuple(x.shape)}, expected {want} (scale {plan.tiles.scale}, 1 channel)"
            )
        return y[:n]

    def _frame_statistics(self, engine: FrozenStatsEngine, frame: np.ndarray) -> np.ndarray:
        """Statistics of one (padded, normalized) frame with the run's estimate, except that
        ``auto`` never turns a frame over ``whole_max_px`` into a whole-frame statistics pass
        (it costs the memory of whole-frame inference, which that budget exists to avoid):
        the crops then, with a warning once."""
        est = self.estimate
        if est is None:
            return engine.frame_statistics(frame)
        estimate = est.estimate
        pixels = int(frame.shape[-2]) * int(frame.shape[-1])
        if self.cfg.stats == "auto" and estimate == "whole" and pixels > self.cfg.whole_max_px:
            self._warn_once(
                "estimate",
                "frozen statistics: %s, but a %d x %d frame exceeds --whole-max-px (%d px): "
                "crops estimate instead, below that check's fidelity (--stats whole forces "
                "exact statistics at the memory of a whole-frame pass)",
                est.reason,
                frame.shape[-2],
                frame.shape[-1],
                self.cfg.whole_max_px,
            )
            estimate = "crops"
        return engine.frame_statistics(frame, estimate)  # type: ignore[call-arg]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Enhance one frame, start to finish, in this thread."""
        return self.run(frame)[0]

    def run(self, frame: np.ndarray, index: int = 0) -> tuple[np.ndarray, FrameTrust | None]:
        """Enhance one frame in this thread: (the enhanced frame, its trust or None when the
        run scores no trust)."""
        work = self.start(np.asarray(frame), index)
        for batch in work.batches():
            work.add(batch, self.infer(work, batch))
        return work.result(), work.trust
