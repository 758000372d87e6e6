"""Streaming enhancement of TIFF stacks: read -> normalize + tile -> engine -> blend -> write.

:func:`enhance_files` runs five stages joined by bounded queues (``EnhanceConfig.queue_size``
items each), so disk reads, CPU tiling/blending, the engine and disk writes overlap while
memory stays bounded whatever the stack length::

    reader thread   FrameReader, one frame at a time
      -> prep thread    FrameRunner.start + FrameWork.batches: plan (once per shape), intensity
                        mapping, the frame's tiles gathered into batches
      -> engine         FrameRunner.infer, in the calling thread (where the engine was entered)
      -> blend thread   FrameWork.add / result: blended, back to the input dtype (clip, round)
      -> writer thread  write_frames: <name>.part, renamed when complete; manifest

The stages are those of :class:`~cyclesr_deploy.runtime.runner.FrameRunner` (the one frame
runner that ``watch`` and ``Enhancer`` call frame by frame), so a frame comes out bit-identical
either way.

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
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from cyclesr_deploy.engines.base import Engine
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.runtime.formats import (
    check_output,
    input_stat,
    is_input,
    is_zarr,
    open_frames,
    write_frames,
)
from cyclesr_deploy.runtime.formats import output_path as _format_output_path
from cyclesr_deploy.runtime.manifest import (
    MANIFEST_NAME,
    FileResult,
    Manifest,
    OutputLock,
    Status,
    held,
    manifest_header,
)
from cyclesr_deploy.runtime.manifest import utc_now as _now
from cyclesr_deploy.runtime.runner import (
    WHOLE_MAX_PX,
    EnhanceConfig,
    FrameRunner,
    FrameWork,
    TileBatch,
    fit_to_engine,
)
from cyclesr_deploy.runtime.tiff import TIFF_SUFFIXES, StackInfo, output_info
from cyclesr_deploy.runtime.trust_policy import FileTrust, UntrustedFile

if TYPE_CHECKING:
    from cyclesr_deploy.trust import FrameTrust

__all__ = [
    "MANIFEST_NAME",
    "TIFF_SUFFIXES",
    "WHOLE_MAX_PX",
    "EnhanceConfig",
    "EnhanceSummary",
    "FileResult",
    "ProgressEvent",
    "check_paths",
    "collect_inputs",
    "enhance_files",
    "fit_to_engine",
    "output_path",
    "triage",
]

log = logging.getLogger(__name__)

ENHANCE_COMMAND = "cyclesr enhance"  # how a run of enhance_files names itself to a refused run
_POLL_S = 0.05  # queue wait granularity: how fast stages notice a stop


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
def collect_inputs(specs: Sequence[str | Path]) -> list[Path]:
    """Expand files, OME-Zarr folders (``*.zarr``), folders (their .tif/.tiff files and
    ``*.zarr`` folders, not recursive) and glob patterns into a sorted-per-argument,
    de-duplicated list of inputs. Raises InputError for a path that does not exist or a
    pattern/folder that matches no input."""
    found: list[Path] = []
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if any(c in text for c in "*?["):
            anchor = Path(path.anchor) if path.is_absolute() else Path()
            pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else text
            matches = sorted(p for p in anchor.glob(pattern) if is_input(p))
            if not matches:
                raise InputError(f"INPUT {text}: the pattern matches no .tif/.tiff file or .zarr")
            found += matches
        elif is_zarr(path):
            found.append(path)
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if is_input(p))
            if not matches:
                raise InputError(f"INPUT {text}: the folder holds no .tif/.tiff file or .zarr")
            found += matches
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"INPUT {text}: no such file or folder")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def check_paths(inputs: Sequence[Path], out_dir: Path, output_format: str = "same") -> None:
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
        name = output_path(p, out_dir, output_format).name
        if name in names and names[name].resolve() != p.resolve():
            raise InputError(f"inputs {names[name]} and {p} would both write {name} into {out_dir}")
        names[name] = p


def output_path(input_path: Path, out_dir: Path, output_format: str = "same") -> Path:
    """Where ``input_path``'s result goes: the same name in ``out_dir`` (another format:
    ``<stem>.ome.zarr`` or ``<stem>.ome.tif``, see ``formats.output_path``)."""
    return _format_output_path(input_path, out_dir, output_format)


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
    failed: BaseException | None = None
    abort: threading.Event = field(default_factory=threading.Event)
    trust: FileTrust | None = None  # the file's frames under the untrusted policy

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
class _Batch:
    job: _Job
    work: FrameWork
    batch: TileBatch
    output: np.ndarray | None = None  # after the engine: (n, C, th*s, tw*s), a copy


@dataclass(eq=False)
class _FrameOut:
    job: _Job
    index: int
    data: np.ndarray
    trust: FrameTrust | None = None


_FINISH = object()  # after the last file


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, InputError | _JobFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class _Stages:
    """Threads joined by bounded queues that give up when the run stops: ``stop`` (fatal error
    or hard stop) ends every stage, ``stop_up`` (an interrupt) only those before the engine
    (``up``), while the stages after it finish complete files."""

    def __init__(self, queue_size: int) -> None:
        self.stop = threading.Event()
        self.stop_up = threading.Event()
        self.fatal: list[BaseException] = []
        self.q_read: queue.Queue[Any] = queue.Queue(queue_size)
        self.q_prep: queue.Queue[Any] = queue.Queue(queue_size)
        self.q_infer: queue.Queue[Any] = queue.Queue(queue_size)
        self.q_out: queue.Queue[Any] = queue.Queue(queue_size)

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


class _Run(_Stages):
    """One run of the staged pipeline over ``jobs``: the frame runner's stages (prep, engine,
    blend) between a reader and a writer thread."""

    def __init__(
        self,
        jobs: list[_Job],
        runner: FrameRunner,
        manifest: Manifest,
        on_progress: Callable[[ProgressEvent], None] | None,
        results: dict[int, FileResult],
    ) -> None:
        super().__init__(runner.cfg.queue_size)
        self.jobs, self.runner, self.cfg = jobs, runner, runner.cfg
        self.manifest, self.on_progress, self.results = manifest, on_progress, results
        self._in_engine: _Job | None = None  # between its start and end in the engine stage
        self._threads: dict[str, threading.Thread] = {}
        self.frames_done = 0
        self.megapixels = 0.0

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
        """The plan of the file's frame shape (validated once per shape) and its output."""
        info = job.info
        assert info is not None
        self.runner.plan(info.frame_shape)
        job.out_info = output_info(info, self.runner.scale)
        check_output(job.out, job.out_info)  # before any frame is computed

    def _prep(self) -> None:
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
                self._put(self.q_prep, msg, up=True)
            elif isinstance(msg, _FrameIn):
                if job.abort.is_set():
                    continue
                try:
                    work = self.runner.start(msg.data, msg.index)
                    for batch in work.batches():
                        self._put(self.q_prep, _Batch(job, work, batch), up=True)
                except Exception as exc:
                    job.fail(exc)
            else:  # _End
                self._put(self.q_prep, msg, up=True)

    def _engine_stage(self) -> None:
        runner = self.runner
        while True:
            msg = self._get(self.q_prep)
            if msg is _FINISH:
                self._put(self.q_infer, _FINISH)
                return
            if not isinstance(msg, _Batch):
                self._in_engine = msg.job if isinstance(msg, _Start) else None
                self._put(self.q_infer, msg)
                continue
            if msg.job.abort.is_set():
                continue
            try:
                y = runner.infer(msg.work, msg.batch)
                data = msg.batch.data
                if y.shape == data[: y.shape[0]].shape:
                    out = data[: y.shape[0]]  # reuse the input buffer (scale 1)
                    np.copyto(out, y)
                else:
                    out = np.array(y, dtype=np.float32, copy=True)  # y may be reused
                msg.output = out
            except Exception as exc:
                msg.job.fail(exc)
                continue
            self._put(self.q_infer, msg)

    def _blend(self) -> None:
        while True:
            msg = self._get(self.q_infer)
            if msg is _FINISH:
                self._put(self.q_out, _FINISH)
                return
            job = msg.job
            if isinstance(msg, _Batch):
                if job.abort.is_set():
                    continue
                try:
                    assert msg.output is not None
                    msg.work.add(msg.batch, msg.output)
                    frame = msg.work.result() if msg.work.complete else None
                except Exception as exc:
                    job.fail(exc)
                    continue
                if frame is not None:
                    self._put(self.q_out, _FrameOut(job, msg.work.index, frame, msg.work.trust))
            else:  # _Start, _End
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
        job.trust = FileTrust(self.cfg.untrusted, job.path.name, info.n_frames)

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
                yield job.trust.admit(msg.index, msg.data, msg.trust)
                written += 1
                self.frames_done += 1
                self.megapixels += mpx
                self._progress(
                    ProgressEvent("frame", job.path, info.n_frames, msg.index, megapixels=mpx)
                )

        try:
            write_frames(
                job.out,
                out_info,
                frames(),
                overwrite=self.cfg.overwrite,
                bigtiff=self.cfg.bigtiff,
                pyramid=self.cfg.pyramid,
                annotations=job.trust.metadata,
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
        refused = job.failed if isinstance(job.failed, UntrustedFile) else None
        skipped = refused is not None and refused.skipped  # --untrusted skip, one frame
        failed = job.failed is not None and not skipped
        if job.trust is not None:
            job.trust.report(failed=failed and refused is None)
        result = FileResult(
            input=str(job.path),
            output=str(output) if output is not None else None,
            status="failed" if failed else "skipped" if skipped else "done",
            frames=frames,
            seconds=round(time.perf_counter() - job.t0, 4) if job.t0 else 0.0,
            error=_error_text(job.failed) if failed and job.failed is not None else None,
            note=str(refused) if skipped else None,
            input_size=job.size,
            input_mtime_ns=job.mtime_ns,
            finished=_now(),
            trust=job.trust.summary() if job.trust is not None else None,
        )
        self.results[job.index] = result
        self.manifest.record(result)
        self.manifest.save()
        self._progress(ProgressEvent("end", job.path, frames, result=result))

    def _progress(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            self.on_progress(event)


def triage(
    paths: list[Path],
    out_dir: Path,
    cfg: EnhanceConfig,
    manifest: Manifest,
    results: dict[int, FileResult],
    on_progress: Callable[[ProgressEvent], None] | None = None,
) -> list[_Job]:
    """The jobs to run; inputs that cannot be read or whose output exists get their result
    in ``results`` (failed / skipped, recorded in ``manifest``, saved, and an ``end`` event
    each to ``on_progress``)."""
    jobs = _triage(paths, out_dir, cfg, manifest, results)
    manifest.save(force=True)
    for i in sorted(results):
        if on_progress is not None:
            on_progress(ProgressEvent("end", paths[i], result=results[i]))
    return jobs


def _triage(
    paths: list[Path],
    out_dir: Path,
    cfg: EnhanceConfig,
    manifest: Manifest,
    results: dict[int, FileResult],
) -> list[_Job]:
    input_set = {p.resolve() for p in paths}
    jobs: list[_Job] = []
    for i, p in enumerate(paths):
        out = output_path(p, out_dir, cfg.output_format)
        try:
            size, mtime = input_stat(p)
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

    The run holds ``out_dir``'s :class:`~cyclesr_deploy.runtime.manifest.OutputLock` from before the
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
    start = time.perf_counter()
    out_dir = Path(out_dir)
    paths = [Path(p) for p in inputs]
    runner = FrameRunner(engine, model, cfg)  # validates the settings against the engine
    cfg = runner.cfg
    check_paths(paths, out_dir, cfg.output_format)

    header = manifest_header(model.name, engine.name, cfg.model_dump(mode="json"))
    estimate = runner.estimate
    if estimate is not None:
        header["stats_estimate"] = {"estimate": estimate.estimate, "reason": estimate.reason}
    with held(
        out_dir, lock, ENHANCE_COMMAND
    ):  # before the manifest is read, until the last file is recorded
        manifest = Manifest(out_dir, header)
        results: dict[int, FileResult] = {}
        jobs = triage(paths, out_dir, cfg, manifest, results, on_progress)
        run = _Run(jobs, runner, manifest, on_progress, results)
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
