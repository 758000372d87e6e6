"""Streaming enhancement of TIFF stacks: read -> normalize + tile -> engine -> blend -> write.

:func:`enhance_files` runs five stages joined by bounded queues (``EnhanceConfig.queue_size``
items each), so disk reads, CPU tiling/blending, the engine and disk writes overlap while
memory stays bounded whatever the stack length::

    reader thread   FrameReader, one frame at a time
      -> prep thread    intensity mapping (model or whole-frame percentiles), tiles gathered
                        into batches across the frames of a stack (plan once per shape)
      -> engine         engine.infer, in the calling thread (where the engine was entered)
      -> blend thread   Blender per frame, back to the input dtype (clip, round)
      -> writer thread  write_frames: <name>.part, renamed when complete; manifest

Errors are per file: an exception in any stage marks that file failed (its ``.part`` is
removed), the stages drop its remaining items, and the next file goes on. KeyboardInterrupt
(or any other BaseException) stops every stage, discards the file being written and is
re-raised: only complete outputs remain. ``cyclesr-manifest.json`` in the output folder records
every input (status, output, frames, seconds, error, input size and mtime), rewritten
atomically after each file; an input whose output exists is skipped unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cyclesr_deploy.engines.base import (
    Engine,
    FrozenStatsEngine,
    TensorSpec,
    check_batch_shape,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.frames import StackInfo, open_frames, output_info, write_frames
from cyclesr_deploy.manifest import (
    MANIFEST_NAME,
    FileResult,
    Manifest,
    OutputLock,
    Status,
    manifest_header,
)
from cyclesr_deploy.manifest import utc_now as _now
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.normalization import IntensityMapping
from cyclesr_deploy.tiling import BLENDS, Blender, TilePlan, TilingConfig, plan_tiles

__all__ = [
    "MANIFEST_NAME",
    "TIFF_SUFFIXES",
    "EnhanceConfig",
    "EnhanceSummary",
    "FileResult",
    "ProgressEvent",
    "check_paths",
    "collect_inputs",
    "enhance_files",
    "output_path",
]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
ENHANCE_COMMAND = "cyclesr enhance"  # how a run of enhance_files names itself to a refused run
_POLL_S = 0.05  # queue wait granularity: how fast stages notice a stop


WHOLE_MAX_PX = 2048 * 2048  # EnhanceConfig.whole_max_px: auto whole-frame budget, px per frame


class EnhanceConfig(BaseModel):
    """Settings of one ``enhance`` run; validated once, saved into the manifest.

    ``tile``: tile side in input px (0: the whole frame as one tile, the only exact choice for
    InstanceNorm generators); ``overlap``: between tiles, in input px (None: from the model's
    receptive field, ``TilingConfig.for_model``); ``batch``: tiles per engine call, gathered
    across the frames of a stack; ``normalize``: ``model`` = the model's dataset percentiles,
    ``frame`` = percentiles of each whole frame (mapped back to the same range);
    ``queue_size``: items between stages (bounds memory); ``bigtiff``: None = above 2 GiB.

    ``tiling_mode`` (InstanceNorm generators cut into several tiles): ``frozen`` = every tile
    normalised with the whole frame's statistics (seam-free, exact up to float rounding; needs an
    engine with the :class:`~cyclesr_deploy.engines.base.FrozenStatsEngine` capability, and
    batches then hold the tiles of one frame only); ``naive`` = each tile normalised with its
    own statistics (brightness differences between tiles); ``auto`` = for InstanceNorm
    generators a frame of at most ``whole_max_px`` pixels (padded; engines with dynamic H, W)
    runs whole, one frame per call (exact: no tiling at all); a larger frame is tiled, ``frozen``
    when the engine supports it, else ``naive`` with a one-time warning. A frame that fits one
    tile runs whole in every mode.

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

    tile: int = Field(default=512, ge=0, le=65536)
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

    def tiling(self, model: ModelConfig, frame_shape: Sequence[int] | None = None) -> TilingConfig:
        """The tiling for ``model``: ``tile > 0`` from its receptive field (``overlap``
        overriding), ``tile == 0`` one tile of the (size-multiple padded) ``frame_shape``."""
        m, s = model.size_multiple, model.scale
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


assert set(BLENDS) == {"cosine", "gaussian", "constant", "crop"}  # EnhanceConfig.blend in sync


class EnhanceSummary(BaseModel):
    """Per-file results (input order) and totals of one :func:`enhance_files` run."""

    files: list[FileResult]
    engine: str
    out_dir: str
    seconds: float
    frames: int
    megapixels: float

    def count(self, status: Status) -> int:
        return sum(f.status == status for f in self.files)

    @property
    def ok(self) -> bool:
        """True when no input failed (skipped inputs count as done)."""
        return self.count("failed") == 0


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to ``on_progress`` from the writer thread: ``start`` (a file begins, ``n_frames``
    known), ``frame`` (one frame written), ``end`` (a file finished; ``result`` set)."""

    kind: Literal["start", "frame", "end"]
    path: Path
    n_frames: int = 0
    frame_index: int = -1
    megapixels: float = 0.0  # input megapixels of one frame
    result: FileResult | None = None


# --- inputs and outputs --------------------------------------------------------------------------
def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES and not path.name.startswith(".")


def collect_inputs(specs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (their .tif/.tiff files, not recursive) and glob patterns into a
    sorted-per-argument, de-duplicated list of files. Raises InputError for a path that does
    not exist or a pattern/folder that matches no TIFF."""
    found: list[Path] = []
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if any(c in text for c in "*?["):
            anchor = Path(path.anchor) if path.is_absolute() else Path()
            pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else text
            matches = sorted(p for p in anchor.glob(pattern) if p.is_file() and _is_tiff(p))
            if not matches:
                raise InputError(f"INPUT {text}: the pattern matches no .tif/.tiff file")
            found += matches
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and _is_tiff(p))
            if not matches:
                raise InputError(f"INPUT {text}: the folder holds no .tif/.tiff file")
            found += matches
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"INPUT {text}: no such file or folder")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def check_paths(inputs: Sequence[Path], out_dir: Path) -> None:
    """Raise InputError when there are no inputs, when ``out_dir`` is the folder of an input
    (outputs keep the input's name) or when two inputs would write the same output."""
    if not inputs:
        raise InputError("INPUT: no input files")
    out_resolved = Path(out_dir).resolve()
    names: dict[str, Path] = {}
    for p in map(Path, inputs):
        if p.resolve().parent == out_resolved:
            raise InputError(
                f"output folder {out_dir} is the folder of input {p}; choose another -o folder "
                "(inputs are never overwritten)"
            )
        if p.name in names and names[p.name].resolve() != p.resolve():
            raise InputError(
                f"inputs {names[p.name]} and {p} would both write {p.name} into {out_dir}"
            )
        names[p.name] = p


def output_path(input_path: Path, out_dir: Path) -> Path:
    """Where ``input_path``'s result goes: the same file name in ``out_dir``."""
    return Path(out_dir) / Path(input_path).name


# --- pipeline messages ---------------------------------------------------------------------------
class _Stopped(BaseException):
    """Raised in a stage when the run is being stopped (interrupt or fatal error elsewhere)."""


class _Interrupted(Exception):
    """Marks the file that was in the engine when the run was interrupted (not recorded)."""


class _JobFailed(Exception):
    """Raised into the writer when an upstream stage failed the file being written."""


@dataclass(eq=False)
class _Job:
    index: int
    path: Path
    out: Path
    size: int | None
    mtime_ns: int | None
    t0: float = 0.0
    info: StackInfo | None = None
    out_info: StackInfo | None = None
    plan: TilePlan | None = None
    batch_size: int = 1
    frozen: bool = False  # tiles normalised with frame statistics (engine.infer_with_stats)
    whole: TilePlan | None = None  # frozen: the whole-frame plan the statistics are taken on
    failed: BaseException | None = None
    abort: threading.Event = field(default_factory=threading.Event)

    def fail(self, exc: BaseException) -> None:
        """Mark the file failed (first error wins) so that every stage drops its items."""
        if self.failed is None:
            if not isinstance(exc, InputError | _JobFailed | _Interrupted):
                log.debug("%s failed", self.path, exc_info=exc)
            # the traceback would keep the failing stage's frames (and their arrays) alive
            self.failed = exc.with_traceback(None)
        self.abort.set()


@dataclass(eq=False)
class _Start:
    job: _Job


@dataclass(eq=False)
class _End:
    job: _Job


@dataclass(eq=False)
class _FrameIn:
    job: _Job
    index: int
    data: np.ndarray


@dataclass(eq=False)
class _FrameState:
    index: int
    mapping: IntensityMapping


@dataclass(eq=False)
class _Batch:
    job: _Job
    data: np.ndarray  # (N, C, th, tw) in, (N, C, th*s, tw*s) after the engine
    slots: list[tuple[_FrameState, int]]
    frozen: bool = False  # run with the statistics of the slots' (single) frame
    frame: np.ndarray | None = None  # frozen, first batch of a frame: (1, C, H, W) for the stats


@dataclass(eq=False)
class _FrameOut:
    job: _Job
    index: int
    data: np.ndarray


_FINISH = object()  # after the last file


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, InputError | _JobFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _stats_estimate(engine: Engine, cfg: EnhanceConfig) -> Any:
    """For a run that may tile with frozen statistics on an engine that estimates them itself
    (``stats`` attribute: ONNX Runtime, torch), the run's estimate, resolved once (``auto``: the
    model folder's check, :func:`cyclesr_deploy.engines.frozen.estimate_for_model`) and logged;
    None otherwise (TensorRT's statistics engine always sees the whole frame)."""
    if not cfg.tile or cfg.tiling_mode == "naive":
        return None
    if not (isinstance(engine, FrozenStatsEngine) and hasattr(engine, "stats")):
        return None
    model_dir = getattr(engine, "model_dir", None)
    if model_dir is None:
        return None
    from cyclesr_deploy.engines.frozen import estimate_for_model

    choice = estimate_for_model(model_dir, cfg.stats)
    choice.log("frozen statistics")
    return choice


class _Run:
    """One run of the staged pipeline over ``jobs``."""

    def __init__(
        self,
        jobs: list[_Job],
        engine: Engine,
        model: ModelConfig,
        cfg: EnhanceConfig,
        manifest: Manifest,
        on_progress: Callable[[ProgressEvent], None] | None,
        results: dict[int, FileResult],
        estimate: Any = None,
    ) -> None:
        self.jobs, self.engine, self.model, self.cfg = jobs, engine, model, cfg
        self.manifest, self.on_progress, self.results = manifest, on_progress, results
        self.spec = engine.input_spec
        self.tiling = cfg.tiling(model) if cfg.tile else None
        self.frozen_capable = isinstance(engine, FrozenStatsEngine)
        self.estimate = estimate  # EstimateChoice of _stats_estimate, or None (no choice)
        if estimate is not None:
            engine.stats = estimate.estimate  # type: ignore[attr-defined]
        self._warned_estimate = False
        self._warned_naive = False
        self._frame_stats: np.ndarray | None = None  # engine stage: the current frame's stats
        self.model_mapping = IntensityMapping.from_config(model.normalization)
        self.stop = threading.Event()
        self.stop_up = threading.Event()
        self._in_engine: _Job | None = None  # between its start and end in the engine stage
        self.fatal: list[BaseException] = []
        self._threads: dict[str, threading.Thread] = {}
        size = cfg.queue_size
        self.q_read: queue.Queue[Any] = queue.Queue(size)
        self.q_prep: queue.Queue[Any] = queue.Queue(size)
        self.q_infer: queue.Queue[Any] = queue.Queue(size)
        self.q_out: queue.Queue[Any] = queue.Queue(size)
        self.frames_done = 0
        self.megapixels = 0.0

    # queue helpers that give up when the run stops (``up``: a stage before the engine, which
    # also stops on an interrupt while the stages after the engine finish complete files)
    def _stopped(self, up: bool) -> bool:
        return self.stop.is_set() or (up and self.stop_up.is_set())

    def _put(self, q: queue.Queue[Any], item: Any, up: bool = False) -> None:
        while True:
            if self._stopped(up):
                raise _Stopped
            with contextlib.suppress(queue.Full):
                q.put(item, timeout=_POLL_S)
                return

    def _get(self, q: queue.Queue[Any], up: bool = False) -> Any:
        while True:
            if self._stopped(up):
                raise _Stopped
            with contextlib.suppress(queue.Empty):
                return q.get(timeout=_POLL_S)

    def _guard(self, stage: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                stage()
            except _Stopped:
                pass
            except BaseException as exc:  # a bug or a failing manifest write: stop everything
                self.fatal.append(exc)
                self.stop.set()

        return run

    def run(self) -> None:
        stages = {"reader": self._reader, "prep": self._prep}
        stages.update(blend=self._blend, writer=self._writer)
        self._threads = {
            name: threading.Thread(target=self._guard(stage), name=f"cyclesr-{name}", daemon=True)
            for name, stage in stages.items()
        }
        threads = list(self._threads.values())
        for t in threads:
            t.start()
        try:
            try:
                self._engine_stage()
            except KeyboardInterrupt:
                self._wind_down()
                raise
            except _Stopped:  # a stage failed fatally (recorded in self.fatal)
                pass
            for t in threads:
                t.join()
        except BaseException:  # an interrupt (a second one: hard stop) or a bug in this thread
            self.stop.set()
            for t in threads:
                t.join()
            raise
        if self.fatal:
            raise self.fatal[0]

    def _wind_down(self) -> None:
        """After an interrupt in the engine stage: stop reading, discard the file in flight,
        let the blend and writer stages finish the files already through the engine."""
        self.stop_up.set()
        job = self._in_engine
        if job is not None:
            job.fail(_Interrupted("interrupted"))
            self._put(self.q_infer, _End(job))
        self._put(self.q_infer, _FINISH)
        self._threads["blend"].join()
        self._threads["writer"].join()

    # --- stages --------------------------------------------------------------------------------
    def _reader(self) -> None:
        for job in self.jobs:
            job.t0 = time.perf_counter()
            try:
                with open_frames(job.path) as reader:
                    job.info = reader.info
                    self._put(self.q_read, _Start(job), up=True)
                    for i in range(reader.info.n_frames):
                        if job.abort.is_set():
                            break
                        self._put(self.q_read, _FrameIn(job, i, reader.read(i)), up=True)
            except Exception as exc:
                job.fail(exc)
            self._put(self.q_read, _End(job), up=True)
        self._put(self.q_read, _FINISH, up=True)

    def _plan(self, job: _Job) -> None:
        """Tile plan, batch size and output description of a file; validated once per file."""
        info = job.info
        assert info is not None
        tiling = self.tiling or self.cfg.tiling(self.model, info.frame_shape)
        whole = self._whole_fits(info.frame_shape)
        if whole:  # auto: whole-frame inference within the memory budget, a frame per call
            tiling = self.cfg.model_copy(update={"tile": 0, "batch": 1}).tiling(
                self.model, info.frame_shape
            )
        plan = plan_tiles(info.frame_shape, tiling)
        job.frozen = self._frozen(plan)
        fixed = self.spec.shape[0]
        per_frame = len(plan.tiles) if job.frozen else len(plan.tiles) * info.n_frames
        batch = fixed or (1 if whole else min(self.cfg.batch, per_frame))
        if job.frozen:
            untiled = self.cfg.model_copy(update={"tile": 0}).tiling(self.model, info.frame_shape)
            job.whole = plan_tiles(info.frame_shape, untiled)
        check_batch_shape(
            self.spec, (batch, self.spec.channels, *plan.tile_shape), name=job.path.name
        )
        job.plan, job.batch_size = plan, batch
        job.out_info = output_info(info, self.model.scale)

    def _frame_estimate(self, frame: np.ndarray) -> str | None:
        """The statistics estimate of one (padded) frame: the run's, except that ``auto``
        never turns a frame over ``whole_max_px`` into a whole-frame statistics pass (it costs
        the memory of whole-frame inference, which that budget exists to avoid): the crops
        then, with a warning once."""
        est = self.estimate
        if est is None:
            return None
        pixels = int(frame.shape[-2]) * int(frame.shape[-1])
        if self.cfg.stats == "auto" and est.estimate == "whole" and pixels > self.cfg.whole_max_px:
            if not self._warned_estimate:
                self._warned_estimate = True
                log.warning(
                    "frozen statistics: %s, but a %d x %d frame exceeds --whole-max-px (%d px): "
                    "crops estimate instead, below that check's fidelity (--stats whole forces "
                    "exact statistics at the memory of a whole-frame pass)",
                    est.reason,
                    frame.shape[-2],
                    frame.shape[-1],
                    self.cfg.whole_max_px,
                )
            return "crops"
        return est.estimate

    def _whole_fits(self, frame_shape: Sequence[int]) -> bool:
        """``auto``: whether a frame runs whole instead of tiled (see
        ``EnhanceConfig.whole_max_px``): InstanceNorm generator, tiles smaller than the frame,
        padded frame within the budget, an engine with dynamic H and W that accepts it."""
        cfg, spec = self.cfg, self.spec
        if cfg.tiling_mode != "auto" or not cfg.tile or self.model.generator.norm != "instance":
            return False
        m = self.model.size_multiple
        h, w = (-(-int(n) // m) * m for n in frame_shape[-2:])
        if h <= cfg.tile and w <= cfg.tile:
            return False  # one tile already covers it
        if h * w > cfg.whole_max_px or spec.shape[2] is not None or spec.shape[3] is not None:
            return False
        if spec.shape[0] not in (None, 1):
            return False  # a fixed batch > 1 would run mostly zero padding around one frame
        top = spec.max_tile
        return top is None or (h <= top[0] and w <= top[1])

    def _frozen(self, plan: TilePlan) -> bool:
        """Whether a file with ``plan`` runs with frozen frame statistics (see
        ``EnhanceConfig.tiling_mode``)."""
        mode = self.cfg.tiling_mode
        if mode != "auto":
            return mode == "frozen"
        if len(plan.tiles) == 1 or self.model.generator.norm != "instance":
            return False
        if self.frozen_capable:
            return True
        if not self._warned_naive:
            self._warned_naive = True
            log.warning(
                "engine %s has no frozen InstanceNorm statistics: tiles are normalised "
                "independently (seams possible); use tile 0, or an engine with frozen "
                "statistics (--tiling frozen: TensorRT frozen engines, onnxruntime with "
                "generator.stats/tile.onnx, or torch)",
                self.engine.name,
            )
        return False

    def _prep(self) -> None:
        channels = self.spec.channels
        buf: np.ndarray | None = None
        slots: list[tuple[_FrameState, int]] = []
        while True:
            msg = self._get(self.q_read, up=True)
            if msg is _FINISH:
                self._put(self.q_prep, _FINISH, up=True)
                return
            job = msg.job
            if isinstance(msg, _Start):
                try:
                    self._plan(job)
                except Exception as exc:
                    job.fail(exc)
                buf, slots = None, []
                self._put(self.q_prep, msg, up=True)
            elif isinstance(msg, _FrameIn):
                if job.abort.is_set():
                    continue
                try:
                    plan = job.plan
                    assert plan is not None
                    if self.cfg.normalize == "frame":
                        mapping = IntensityMapping.from_frame(
                            msg.data, self.model.normalization.pmin, self.model.normalization.pmax
                        )
                    else:
                        mapping = self.model_mapping
                    state = _FrameState(msg.index, mapping)
                    frame = msg.data[None]
                    whole: np.ndarray | None = None
                    if job.frozen:  # statistics of the whole normalized, padded frame
                        assert job.whole is not None
                        whole = np.empty((1, channels, *job.whole.tile_shape), np.float32)
                        job.whole.read_tile(frame, 0, whole[0])
                        mapping.before(whole, out=whole)
                    for t in range(len(plan.tiles)):
                        if buf is None:
                            buf = np.empty((job.batch_size, channels, *plan.tile_shape), np.float32)
                        slot = buf[len(slots)]
                        plan.read_tile(frame, t, slot)
                        mapping.before(slot, out=slot)
                        slots.append((state, t))
                        last = t == len(plan.tiles) - 1
                        if len(slots) == job.batch_size or (job.frozen and last):
                            if job.frozen:
                                buf[len(slots) :] = 0
                            batch = _Batch(job, buf, slots, job.frozen, whole)
                            self._put(self.q_prep, batch, up=True)
                            buf, slots, whole = None, [], None
                except Exception as exc:
                    job.fail(exc)
                    buf, slots = None, []
            else:  # _End
                if slots and not job.abort.is_set():
                    assert buf is not None
                    buf[len(slots) :] = 0  # a fixed-batch engine runs the unused slots too
                    self._put(self.q_prep, _Batch(job, buf, slots), up=True)
                buf, slots = None, []
                self._put(self.q_prep, msg, up=True)

    def _engine_stage(self) -> None:
        engine = self.engine
        checked: _Job | None = None
        while True:
            msg = self._get(self.q_prep)
            if msg is _FINISH:
                self._put(self.q_infer, _FINISH)
                return
            if not isinstance(msg, _Batch):
                self._in_engine = msg.job if isinstance(msg, _Start) else None
                self._put(self.q_infer, msg)
                continue
            job = msg.job
            if job.abort.is_set():
                continue
            try:
                n = len(msg.slots)
                x = msg.data  # full size; a partial last batch keeps stale tiles past n
                if self.spec.shape[0] is None:
                    x = x[:n]
                if msg.frozen:
                    frozen_engine = cast(FrozenStatsEngine, engine)
                    if msg.frame is not None:  # the first batch of a frame
                        estimate = self._frame_estimate(msg.frame)
                        self._frame_stats = (
                            frozen_engine.frame_statistics(msg.frame)
                            if estimate is None
                            else frozen_engine.frame_statistics(msg.frame, estimate)  # type: ignore[call-arg]
                        )
                        msg.frame = None
                    assert self._frame_stats is not None
                    y = frozen_engine.infer_with_stats(x, self._frame_stats)
                else:
                    y = engine.infer(x)
                plan = job.plan
                assert plan is not None
                if checked is not job:  # once per file: the engine's output shape
                    want = (x.shape[0], 1, *plan.tile_out_shape)
                    if tuple(y.shape) != want:
                        raise InputError(
                            f"engine {engine.name}: returned shape {tuple(y.shape)} for input "
                            f"{tuple(x.shape)}, expected {want} (scale {plan.scale}, 1 channel)"
                        )
                    checked = job
                y = y[:n]
                if y.shape == msg.data[:n].shape:
                    out = msg.data[:n]  # reuse the input buffer (scale 1)
                    np.copyto(out, y)
                else:
                    out = np.array(y, dtype=np.float32, copy=True)  # y may be reused
                msg.data = out
            except Exception as exc:
                job.fail(exc)
                continue
            self._put(self.q_infer, msg)

    def _blend(self) -> None:
        active: dict[int, Blender] = {}
        pool: list[Blender] = []
        while True:
            msg = self._get(self.q_infer)
            if msg is _FINISH:
                self._put(self.q_out, _FINISH)
                return
            job = msg.job
            if isinstance(msg, _Start):
                active, pool = {}, []
                self._put(self.q_out, msg)
            elif isinstance(msg, _Batch):
                if job.abort.is_set():
                    continue
                try:
                    plan, info = job.plan, job.info
                    assert plan is not None and info is not None
                    done = []
                    for slot, (state, tile) in enumerate(msg.slots):
                        blender = active.get(state.index)
                        if blender is None:
                            blender = active[state.index] = pool.pop() if pool else Blender(plan)
                            blender.start()
                        blender.add(tile, msg.data[slot])
                        if blender.complete:
                            y = blender.result()[0]
                            pool.append(active.pop(state.index))
                            done.append(
                                (state.index, state.mapping.after(y, info.dtype, inplace=True))
                            )
                except Exception as exc:
                    job.fail(exc)
                    continue
                for index, frame in done:
                    self._put(self.q_out, _FrameOut(job, index, frame))
            else:  # _End
                if active and not job.abort.is_set():
                    job.fail(RuntimeError(f"{len(active)} frame(s) left incomplete"))
                active = {}
                self._put(self.q_out, msg)

    def _writer(self) -> None:
        while True:
            msg = self._get(self.q_out)
            if msg is _FINISH:
                return
            if isinstance(msg, _Start):
                self._write_job(msg.job)
            elif isinstance(msg, _End):  # failed before any frame (unreadable, bad plan)
                self._finish(msg.job, frames=0)

    def _write_job(self, job: _Job) -> None:
        end_seen = False
        info, out_info = job.info, job.out_info
        if job.failed is not None or info is None or out_info is None:
            self._drain(job)
            self._finish(job, frames=0)
            return
        mpx = info.frame_shape[0] * info.frame_shape[1] / 1e6
        self._progress(ProgressEvent("start", job.path, info.n_frames, megapixels=mpx))
        written = 0

        def frames() -> Iterator[np.ndarray]:
            nonlocal end_seen, written
            while True:
                msg = self._get(self.q_out)
                if msg is _FINISH or msg.job is not job:
                    raise RuntimeError("pipeline out of order")  # a bug, never expected
                if job.failed is not None:
                    end_seen = isinstance(msg, _End)
                    raise _JobFailed(_error_text(job.failed))
                if isinstance(msg, _End):
                    end_seen = True
                    return
                if msg.index != written:
                    raise RuntimeError(f"frame {msg.index} arrived, expected {written}")
                yield msg.data
                written += 1
                self.frames_done += 1
                self.megapixels += mpx
                self._progress(
                    ProgressEvent("frame", job.path, info.n_frames, msg.index, megapixels=mpx)
                )

        try:
            write_frames(
                job.out, out_info, frames(), overwrite=self.cfg.overwrite, bigtiff=self.cfg.bigtiff
            )
        except Exception as exc:
            job.fail(exc)
            if not end_seen:
                self._drain(job)
            self._finish(job, frames=0)
            return
        self._finish(job, frames=written, output=job.out)

    def _drain(self, job: _Job) -> None:
        """Consume the failed ``job``'s remaining items up to its end marker."""
        while True:
            msg = self._get(self.q_out)
            if msg is _FINISH or (isinstance(msg, _End) and msg.job is job):
                return

    def _finish(self, job: _Job, frames: int, output: Path | None = None) -> None:
        if isinstance(job.failed, _Interrupted):
            return  # neither done nor failed: the next run processes it
        failed = job.failed is not None
        result = FileResult(
            input=str(job.path),
            output=str(output) if output is not None else None,
            status="failed" if failed else "done",
            frames=frames,
            seconds=round(time.perf_counter() - job.t0, 4) if job.t0 else 0.0,
            error=_error_text(job.failed) if job.failed is not None else None,
            input_size=job.size,
            input_mtime_ns=job.mtime_ns,
            finished=_now(),
        )
        self.results[job.index] = result
        self.manifest.record(result)
        self.manifest.save()
        self._progress(ProgressEvent("end", job.path, frames, result=result))

    def _progress(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            self.on_progress(event)


@contextlib.contextmanager
def _held(out_dir: Path, lock: OutputLock | None) -> Iterator[None]:
    """Hold ``out_dir``'s lock: the caller's ``lock`` (held, on that folder) or a new one."""
    if lock is None:
        with OutputLock(out_dir, command=ENHANCE_COMMAND):
            yield
        return
    if not lock.held or lock.out_dir.resolve() != out_dir.resolve():
        raise ValueError(f"lock: not held, or not the lock of {out_dir}")
    yield


def _triage(
    paths: list[Path],
    out_dir: Path,
    cfg: EnhanceConfig,
    manifest: Manifest,
    results: dict[int, FileResult],
) -> list[_Job]:
    """The jobs to run; inputs that cannot be read or whose output exists get their result
    in ``results`` (failed / skipped, recorded in ``manifest``)."""
    input_set = {p.resolve() for p in paths}
    jobs: list[_Job] = []
    for i, p in enumerate(paths):
        out = output_path(p, out_dir)
        try:
            st = p.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError as exc:
            results[i] = FileResult(input=str(p), status="failed", error=f"{p}: {exc}")
            manifest.record(results[i])
            continue
        base = {"input": str(p), "input_size": size, "input_mtime_ns": mtime}
        if out.resolve() in input_set:
            results[i] = FileResult(
                **base, status="failed", error=f"{out} is an input; it is never overwritten"
            )
        elif out.exists() and not cfg.overwrite:
            prev = manifest.entry(p)
            if prev and prev.get("status") == "done":
                same = prev.get("input_size") == size and prev.get("input_mtime_ns") == mtime
                why = "done in an earlier run" + ("" if same else "; the input changed since")
            else:
                why = "output exists"
            results[i] = FileResult(
                **base, output=str(out), status="skipped", note=f"{why} (use overwrite)"
            )
        else:
            jobs.append(_Job(i, p, out, size, mtime))
            continue
        manifest.record(results[i])
    return jobs


def fit_to_engine(cfg: EnhanceConfig, spec: TensorSpec) -> EnhanceConfig:
    """Adapt tile and batch to an engine with fixed limits (a static TensorRT engine): the
    batch is capped at ``max_batch`` and a tiled run uses the engine's tile when the requested
    one exceeds ``max_tile`` (or when the engine accepts one tile size only). Logged; engines
    without limits (ONNX Runtime, PyTorch) leave ``cfg`` unchanged."""
    update: dict[str, int] = {}
    if spec.max_batch is not None and cfg.batch > spec.max_batch:
        update["batch"] = spec.max_batch
    if cfg.tile and spec.max_tile is not None:
        max_h, max_w = spec.max_tile
        fixed = spec.min_tile is not None and tuple(spec.min_tile) == tuple(spec.max_tile)
        if max_h == max_w and (cfg.tile > max_h or (fixed and cfg.tile != max_h)):
            update["tile"] = max_h
    if update:
        log.info("adapted to the engine's limits: %s", update)
        return cfg.model_copy(update=update)
    return cfg


def enhance_files(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    engine: Engine,
    model: ModelConfig,
    cfg: EnhanceConfig | None = None,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    lock: OutputLock | None = None,
) -> EnhanceSummary:
    """Enhance each TIFF of ``inputs`` with ``engine`` (entered by the caller) into ``out_dir``.

    The run holds ``out_dir``'s :class:`~cyclesr_deploy.manifest.OutputLock` from before the
    manifest is read to the end (also on errors and interrupts): a run into a folder that
    another run holds raises InputError naming the holder and writes nothing. ``lock``: that
    lock, already held by the caller (e.g. taken before opening a slow engine, so that a second
    run is refused at once); None: taken here.

    Raises InputError before touching anything for arguments that cannot work: no inputs,
    ``out_dir`` being an input's folder, two inputs with the same file name, a tiling the
    engine cannot run, an engine whose scale differs from ``model``'s. Per-file problems
    (unreadable, RGB, NaN, ...) are recorded in the summary and the manifest; the other files
    go on. See the module docstring for the stages, skipping and interrupts.
    """
    cfg = cfg or EnhanceConfig()
    start = time.perf_counter()
    out_dir = Path(out_dir)
    paths = [Path(p) for p in inputs]
    check_paths(paths, out_dir)
    spec = engine.input_spec
    cfg = fit_to_engine(cfg, spec)
    if spec.scale != model.scale:
        raise InputError(
            f"engine {engine.name} upscales x{spec.scale} but the model config says x{model.scale}"
        )
    if spec.channels != 1:
        raise InputError(f"the model takes {spec.channels} channels; only 1 is supported")
    if cfg.tiling_mode == "frozen" and not isinstance(engine, FrozenStatsEngine):
        raise InputError(
            f"tiling mode 'frozen': engine {engine.name} cannot run with frozen InstanceNorm "
            "statistics (use cyclesr_deploy.engines.frozen.open_frozen_engine, or tiling "
            "'naive'/'auto')"
        )
    if cfg.tile:
        tiling = cfg.tiling(model)
        batch = spec.shape[0] or cfg.batch
        check_batch_shape(spec, (batch, 1, *tiling.tile_shape), name="--tile/--batch")

    header = manifest_header(model.name, engine.name, cfg.model_dump(mode="json"))
    estimate = _stats_estimate(engine, cfg)
    if estimate is not None:
        header["stats_estimate"] = {"estimate": estimate.estimate, "reason": estimate.reason}
    with _held(out_dir, lock):  # before the manifest is read, until the last file is recorded
        manifest = Manifest(out_dir, header)
        results: dict[int, FileResult] = {}
        jobs = _triage(paths, out_dir, cfg, manifest, results)
        manifest.save(force=True)
        for i in sorted(results):
            if on_progress is not None:
                on_progress(ProgressEvent("end", paths[i], result=results[i]))
        run = _Run(jobs, engine, model, cfg, manifest, on_progress, results, estimate)
        if jobs:
            run.run()
    return EnhanceSummary(
        files=[results[i] for i in sorted(results)],
        engine=engine.name,
        out_dir=str(out_dir),
        seconds=round(time.perf_counter() - start, 4),
        frames=run.frames_done,
        megapixels=round(run.megapixels, 6),
    )
