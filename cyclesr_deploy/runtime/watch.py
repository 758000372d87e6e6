"""Acquisition mode: enhance TIFF frames as the microscope writes them into a folder.

:func:`watch_folder` runs two threads:

* the **scanner** (background thread, :class:`~cyclesr_deploy.runtime.watch_scan.Scanner`) lists
  the input folder (``os.scandir``) at once on every filesystem event (``watchdog``: inotify,
  ReadDirectoryChangesW, FSEvents; ``use_events``, the default) and every ``poll`` seconds
  in any case (the fallback, and the only way on network shares: ``--polling``). It
  decides when pages are complete (below) and appends references to them, in the order
  they became complete, to the backlog;
* the **worker** (the calling thread, where the engine was entered) takes one page at a
  time from the backlog (:class:`_Backlog`), reads it, enhances it
  (:class:`~cyclesr_deploy.runtime.runner.FrameRunner`) and writes it
  (:class:`~cyclesr_deploy.runtime.watch_output.Outputs`). Only the page being processed is in
  memory: the backlog holds (file, page) references, the pixels stay on disk, so memory is
  bounded however far behind the engine is.

Completeness (never read a half-written file). A file is parsed page by page with tifffile;
page *k* can only count as complete when its IFD parses and its pixel data lie inside the
file (writers write sequentially, so those bytes are written). It then counts as complete by
the first rule that holds (``Item.rule``; the live status counts pages per rule, the manifest
says ``complete_by``): ``announced``: the metadata announce the page count (OME-XML
SizeZ*T*C, ImageJ ``images=``, tifffile's shaped ``shape``) and that many pages lie wholly
inside the file, so nothing can follow; ``renamed``: the file appeared by rename (a
filesystem event; the atomic temp-name-then-rename write) and has not changed since;
``next-page``: a later page's IFD exists (sequential writers append IFD + data page by page);
``stable``: the file's size and mtime have not changed for ``stable`` seconds, the only rule
left for a file that announces nothing and was written in place (a plain one-page TIFF: one
frame, or the first page of a stack still to grow? Its data can be inside the file before the
writer is done; one page written in pieces is one frame, never a stack: a stack needs a
second page IFD). An announced stack whose count is not reached stays open. Any parse or
permission
error (Windows refuses reads of a file being written) means "not ready yet" while the file
changes. A file that stops changing (``stable`` s) and is no readable single-channel TIFF
(zero bytes, not a TIFF, RGB, C > 1, an unsupported dtype) fails with the message ``cyclesr
enhance`` gives (the same checks, :func:`~cyclesr_deploy.runtime.tiff.check_layout`; manifest
``failed``, counted as failed) and is tried again if it changes. A readable TIFF whose data
stay short (truncated) is reported ``incomplete`` and watched again if it changes.

Files. A file whose TIFF metadata announce one frame (or holds one page and announces
nothing) is a frame file: its output is written with
:func:`~cyclesr_deploy.runtime.tiff.write_frames` (``name.part`` then renamed; metadata
carried over). Any other file is a growing stack: its enhanced pages are appended to
``OUT/name.part`` as they complete, and the ``.part`` is renamed to ``OUT/name`` when the
announced number of pages is reached, after ``idle`` seconds without growth, or when the watch
stops; so an output is never observed half written. If the stack grows again later, the pages
so far are copied into a new ``.part`` and the new pages appended
(:class:`~cyclesr_deploy.runtime.tiff.StackAppender`: OME-TIFF with the input's axes, ``T``
for unnamed pages, and the pixel size divided by the scale).

Backlog policy (``when_behind``): ``queue`` processes every page in order; a backlog above
``queue_size`` is logged as a warning (nothing is ever dropped). ``latest`` always takes the
newest page and marks the older waiting ones ``skipped`` in the manifest (frame files:
status ``skipped``, to enhance later with ``cyclesr enhance``; stacks: ``skipped_pages``).

Stop and resume. ``stop`` (an event; ``cyclesr watch`` sets it on SIGINT/SIGTERM) finishes the
page in flight, closes and renames open stacks, saves the manifest and returns. A restart
skips frame files whose output exists and continues stacks after the pages already in their
output (or recorded as skipped), so nothing is done twice and nothing is left out.
``cyclesr-manifest.json`` uses the format of ``cyclesr enhance`` (extra keys ``next_page``,
``skipped_pages``, ``watch``); stale ``.part`` files of a killed run are removed at start.
:attr:`WatchStatus.ok` is True only when every frame succeeded (``cyclesr watch`` exits 0 then,
else 1 like ``cyclesr enhance``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cyclesr_deploy.engines.base import Engine
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.runtime.manifest import (
    Manifest,
    OutputLock,
    held,
    manifest_header,
)
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner
from cyclesr_deploy.runtime.tiff import PageProbe, probe_pages
from cyclesr_deploy.runtime.watch_output import PHASES, Outputs
from cyclesr_deploy.runtime.watch_scan import RULES, Close, Item, Scanner, State

__all__ = [
    "PageProbe",
    "WatchConfig",
    "WatchStatus",
    "WatchWorker",
    "probe_pages",
    "watch_folder",
]

log = logging.getLogger(__name__)

WATCH_COMMAND = "cyclesr watch"  # how a watch names itself to a run refused its output folder
_LATENCY_WINDOW = 2000  # latencies kept for the percentiles
_RATE_WINDOW_S = 10.0


class WatchConfig(BaseModel):
    """Settings of ``cyclesr watch`` (besides the per-frame :class:`EnhanceConfig`).

    ``poll``: seconds between folder scans; ``stable``: seconds a file's size must stay the
    same before its last page counts as complete; ``idle``: seconds without growth after
    which a stack's output is closed (renamed); ``when_behind``: ``queue`` or ``latest``;
    ``queue_size``: backlog (pages) above which a warning is logged; ``use_events``: wake on
    filesystem events (watchdog) and take a rename as completeness (polling always runs; off:
    polling only, for network shares, which deliver no events); ``exit_idle``: stop by itself
    after that many seconds with nothing new and nothing pending (None: run until stopped).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    poll: float = Field(default=0.5, gt=0, le=60)
    stable: float = Field(default=1.0, ge=0, le=3600)
    idle: float = Field(default=30.0, gt=0)
    when_behind: Literal["queue", "latest"] = "queue"
    queue_size: int = Field(default=64, ge=1)
    use_events: bool = True
    exit_idle: float | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class WatchStatus:
    """A snapshot for the live display: frames ``seen`` (complete pages found), ``done``
    (written), ``queued`` (backlog), ``skipped`` (latest policy), ``failed``, files
    ``incomplete`` (stable but truncated), latency arrival -> written p50/p95 (s), frames/s
    over the last 10 s, the engine's name; ``split``: p50 (s) of each phase of the latency
    (:data:`~cyclesr_deploy.runtime.watch_output.PHASES`: wait = arrival -> judged complete,
    queue, read, compute, write); ``rules``: pages per completeness rule that judged them;
    ``trust``: the last frame's trust score, ``untrusted``: frames flagged so far."""

    seen: int
    done: int
    queued: int
    skipped: int
    failed: int
    incomplete: int
    p50: float | None
    p95: float | None
    fps: float
    backend: str
    elapsed: float
    incomplete_files: tuple[str, ...] = ()
    stopping: bool = False
    split: tuple[tuple[str, float], ...] = ()
    rules: tuple[tuple[str, int], ...] = ()
    trust: float | None = None  # the last frame's trust score (None: not scored)
    untrusted: int = 0  # frames flagged untrusted so far

    @property
    def ok(self) -> bool:
        """Every frame found was written: none failed, no file left incomplete."""
        return not self.failed and not self.incomplete

    def line(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        return (
            f"in {self.seen}, done {self.done}, queued {self.queued}, skipped {self.skipped}, "
            f"failed {self.failed}, incomplete {self.incomplete}; latency p50 {ms(self.p50)} "
            f"p95 {ms(self.p95)} ({self.split_text()}); complete by {self.rules_text()}; "
            f"{self.trust_text()}; {self.fps:.2f} frames/s; {self.backend}"
        )

    def trust_text(self) -> str:
        """``trust 0.41, untrusted 2`` (the last frame's score, frames flagged so far)."""
        if self.trust is None:
            return "trust -"
        return f"trust {self.trust:.3g}, untrusted {self.untrusted}"

    def split_text(self) -> str:
        """``wait 3 / queue 0 / read 4 / compute 180 / write 9 ms`` (p50 of each phase)."""
        if not self.split:
            return "-"
        return " / ".join(f"{k} {v * 1000:.0f}" for k, v in self.split) + " ms"

    def rules_text(self) -> str:
        """``announced 12, stable 1``: pages per completeness rule."""
        return ", ".join(f"{k} {n}" for k, n in self.rules) or "-"


class _Backlog:
    """The worker's side of the backlog: the ``when_behind`` policy (``latest`` skips the
    older waiting pages and records them) and the falling-behind warning."""

    def __init__(self, state: State, outputs: Outputs) -> None:
        self.state, self.outputs, self.cfg = state, outputs, state.cfg
        self.warned = False

    def warn_if_behind(self) -> None:
        n_frames = self.state.queued()
        if n_frames > self.cfg.queue_size and not self.warned:
            self.warned = True
            log.warning(
                "falling behind: %d frames waiting (> %d); nothing is dropped%s",
                n_frames,
                self.cfg.queue_size,
                "" if self.cfg.when_behind == "latest" else " (--when-behind queue)",
            )
        elif n_frames <= self.cfg.queue_size // 2:
            self.warned = False

    def take(self, stop: threading.Event) -> Item | Close | None:
        """The next item, waiting at most ~50 ms; None when there is none or on stop."""
        state = self.state
        with state.lock:
            if not state.backlog:
                state.work.wait(0.05)
            if not state.backlog or stop.is_set():
                return None
            if self.cfg.when_behind == "latest":
                self._skip_older()
            return state.backlog.popleft()

    def _skip_older(self) -> None:
        backlog = self.state.backlog
        newest = next(
            (i for i in range(len(backlog) - 1, -1, -1) if isinstance(backlog[i], Item)), None
        )
        if not newest:
            return
        keep: list[Item | Close] = []
        for _ in range(newest):
            item = backlog.popleft()
            if isinstance(item, Item):
                self.skip(item)
            else:
                keep.append(item)
        backlog.extendleft(reversed(keep))

    def skip(self, item: Item) -> None:
        """Record ``item`` as skipped (the engine was behind; it is never enhanced)."""
        item.frame = None  # pixels held in memory (acquisition hook): dropped
        src = item.src
        src.skipped.append(item.page)
        self.state.skipped += 1
        if src.frame_file:
            self.state.manifest.update(
                src.path,
                status="skipped",
                note="skipped: the engine was behind (--when-behind latest); enhance it later "
                "with 'cyclesr enhance'",
                skipped_pages=src.skipped,
                next_page=src.queued_to,
                frames=0,
                input_size=src.size,
                input_mtime_ns=src.mtime_ns,
            )
        else:
            self.outputs.record_stack(src, status="partial")


class WatchWorker:
    """The worker side of a watch, whatever feeds its backlog (the folder scanner of
    :func:`watch_folder`, or :mod:`cyclesr_deploy.runtime.acquisition`'s hook): the frame
    runner, the ``when_behind`` policy, the outputs, the manifest and the latency accounting.
    ``handle(item, taken)`` processes one backlog item in the calling thread (the engine's)."""

    def __init__(
        self,
        out_dir: Path,
        engine: Engine,
        model: ModelConfig,
        cfg: WatchConfig,
        ecfg: EnhanceConfig,
        stop: threading.Event,
        on_frame: Callable[[Path, int, float], None] | None = None,
    ) -> None:
        self.out_dir, self.engine, self.cfg = out_dir, engine, cfg
        self.stop, self.on_frame = stop, on_frame
        runner = FrameRunner(engine, model, ecfg)  # the frame runner: its one construction
        header = manifest_header(  # runner.cfg: the settings as run (the auto tile's budget)
            model.name,
            engine.name,
            runner.cfg.model_dump(mode="json"),
            watch=cfg.model_dump(mode="json"),
        )
        manifest = Manifest(out_dir, header, interval=1.0)
        self.state = State(out_dir, cfg, manifest)
        self.outputs = Outputs(self.state, runner.run, model.scale, self._done, ecfg.untrusted)
        self.backlog = _Backlog(self.state, self.outputs)
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.splits: deque[tuple[float, ...]] = deque(maxlen=_LATENCY_WINDOW)
        self.done_times: deque[float] = deque()
        self.t_start = time.perf_counter()

    def _done(self, item: Item, t1: float, split: dict[str, float]) -> None:
        with self.state.lock:
            self.state.done += 1
            self.latencies.append(t1 - item.arrival)
            self.splits.append(tuple(split[k] for k in PHASES))
            self.done_times.append(t1)
            while t1 - self.done_times[0] > _RATE_WINDOW_S:  # bounded without status() calls
                self.done_times.popleft()
            self.state.last_activity = t1
        if self.on_frame is not None:
            self.on_frame(item.src.path, item.page, t1 - item.arrival)

    def status(self) -> WatchStatus:
        state = self.state
        with state.lock:
            now = time.perf_counter()
            while self.done_times and now - self.done_times[0] > _RATE_WINDOW_S:
                self.done_times.popleft()
            window = min(_RATE_WINDOW_S, now - self.t_start)
            lat = np.array(self.latencies) if self.latencies else None
            split = np.median(np.array(self.splits), axis=0) if self.splits else ()
            incomplete = tuple(s.path.name for s in state.sources.values() if s.incomplete)
            return WatchStatus(
                seen=state.seen,
                done=state.done,
                queued=state.queued(),
                skipped=state.skipped,
                failed=state.failed,
                incomplete=len(incomplete),
                p50=float(np.percentile(lat, 50)) if lat is not None else None,
                p95=float(np.percentile(lat, 95)) if lat is not None else None,
                fps=len(self.done_times) / window if window > 0 else 0.0,
                backend=self.engine.name,
                elapsed=now - self.t_start,
                incomplete_files=incomplete,
                stopping=self.stop.is_set(),
                split=tuple((k, float(v)) for k, v in zip(PHASES, split, strict=False)),
                rules=tuple((r, state.rules[r]) for r in RULES if state.rules[r]),
                trust=state.last_trust,
                untrusted=state.untrusted,
            )

    def handle(self, item: Item | Close, taken: float) -> None:
        """Process one backlog item: close a stack's output, or enhance and write a page."""
        if isinstance(item, Close):
            self.outputs.close_stack(item.src)
        else:
            self.outputs.process(item, taken)

    def close_outputs(self) -> None:
        """Close (rename) every open stack output and save the manifest."""
        for src in list(self.state.sources.values()):
            try:  # a failure is the stack's, recorded there; the other stacks still close
                self.outputs.close_stack(src)
            except Exception as exc:
                log.error("%s: closing its output failed: %s", src.path.name, exc)
        with self.state.lock:
            self.state.manifest.save(force=True)


class _Watch(WatchWorker):
    """One watch run: starts the scanner thread, runs the worker loop, reports status."""

    def __init__(
        self,
        in_dir: Path,
        on_status: Callable[[WatchStatus], None] | None,
        status_every: float,
        *worker: Any,
    ) -> None:
        super().__init__(*worker)  # out_dir, engine, model, cfg, ecfg, stop, on_frame
        self.in_dir = in_dir
        self.on_status, self.status_every = on_status, status_every
        self.scanner = Scanner(in_dir, self.state)
        self.scanner_error: BaseException | None = None

    def _scanner(self) -> None:
        state, scanner = self.state, self.scanner
        try:
            while not self.stop.is_set():
                now = time.perf_counter()
                with state.lock:
                    scanner.scan(now)
                    due = now + self.cfg.poll
                    for src in sorted(state.sources.values(), key=lambda s: s.seq):
                        deadline = scanner.update(src, now)
                        if deadline is not None:
                            due = min(due, max(deadline, now + 0.005))
                    scanner.idle_stacks(now)
                    scanner.release(now)
                    self.backlog.warn_if_behind()
                    state.manifest.save()
                state.wake.wait(max(0.0, due - time.perf_counter()))
                state.wake.clear()
        except BaseException as exc:  # surfaced by the worker
            self.scanner_error = exc
            self.stop.set()
            with state.lock:
                state.work.notify_all()

    def run(self) -> WatchStatus:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.outputs.remove_stale_parts(self.out_dir)
        observer = self._start_events() if self.cfg.use_events else None
        scanner = threading.Thread(target=self._scanner, name="cyclesr-watch-scan", daemon=True)
        scanner.start()
        next_status = time.perf_counter() + self.status_every
        try:
            while True:
                item = self.backlog.take(self.stop)
                now = time.perf_counter()  # taken: the end of the item's queue time
                if self.on_status is not None and now >= next_status:
                    self.on_status(self.status())
                    next_status = now + self.status_every
                if item is None:
                    if self.stop.is_set():
                        break
                    if self._idle_exit(now):
                        self.stop.set()
                        break
                else:
                    self.handle(item, now)
        finally:
            self._finish(scanner, observer)
        if self.scanner_error is not None:
            raise self.scanner_error
        final = self.status()
        if self.on_status is not None:
            self.on_status(final)
        return final

    def _finish(self, scanner: threading.Thread, observer: Any) -> None:
        self.stop.set()
        self.state.wake.set()
        scanner.join(timeout=10)
        if observer is not None:
            with contextlib.suppress(Exception):
                observer.stop()
        self.close_outputs()

    def _idle_exit(self, now: float) -> bool:
        if self.cfg.exit_idle is None:
            return False
        state = self.state
        with state.lock:
            return (
                not state.backlog
                and not state.ready
                and not self.scanner.pending()
                and now - state.last_activity >= self.cfg.exit_idle
            )

    def _start_events(self) -> Any:
        """Wake the scanner on every filesystem event and tell it which files were renamed
        into place (watchdog, a dependency: imported here, ~25 ms). Polling goes on anyway;
        without events (no watchdog, no notifications on this filesystem) it is all there is."""
        try:
            from watchdog.events import FileSystemEventHandler  # type: ignore[import-not-found]
            from watchdog.observers import Observer  # type: ignore[import-not-found]
        except ImportError as exc:  # a plain dependency: only a broken install lands here
            log.warning(
                "filesystem events unavailable (%s); polling every %s s", exc, self.cfg.poll
            )
            return None
        wake, moved, folder = self.state.wake, self.state.moved, self.in_dir.resolve()

        class _Handler(FileSystemEventHandler):  # type: ignore[misc]
            def on_any_event(self, event: Any) -> None:
                if event.event_type == "moved" and not event.is_directory:
                    dest = Path(os.fsdecode(event.dest_path))
                    if dest.parent.resolve() == folder:
                        moved.append(dest.name)
                wake.set()

        try:
            observer = Observer()
            observer.schedule(_Handler(), str(self.in_dir), recursive=False)
            observer.daemon = True
            observer.start()
            return observer
        except Exception as exc:  # polling alone still works
            log.info("filesystem events unavailable (%s); polling only", exc)
            return None


def check_watch_paths(in_dir: Path, out_dir: Path) -> None:
    """InputError unless ``in_dir`` is a folder and ``out_dir`` is another one."""
    if not Path(in_dir).is_dir():
        raise InputError(f"IN_DIR {in_dir}: not a folder")
    if Path(in_dir).resolve() == Path(out_dir).resolve():
        raise InputError("the output folder must differ from the watched folder")


def watch_folder(
    in_dir: str | Path,
    out_dir: str | Path,
    engine: Engine,
    model: ModelConfig,
    cfg: WatchConfig | None = None,
    enhance: EnhanceConfig | None = None,
    *,
    stop: threading.Event | None = None,
    on_status: Callable[[WatchStatus], None] | None = None,
    status_every: float = 1.0,
    on_frame: Callable[[Path, int, float], None] | None = None,
    lock: OutputLock | None = None,
) -> WatchStatus:
    """Enhance the TIFFs written into ``in_dir`` into ``out_dir`` until ``stop`` is set (or
    ``cfg.exit_idle``); ``engine`` is entered by the caller and runs in this thread.
    ``on_status`` gets a :class:`WatchStatus` every ``status_every`` s and ``on_frame`` gets
    (input path, page, latency s) after each written frame, both from this thread. The run
    holds ``out_dir``'s :class:`~cyclesr_deploy.runtime.manifest.OutputLock` (``lock``: already
    held by the caller; None: taken here); a folder another run holds is refused (InputError).
    Returns the final status. See the module docstring for completeness, policies, resume."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_watch_paths(in_dir, out_dir)
    with held(out_dir, lock, WATCH_COMMAND):  # before the manifest is read
        run = _Watch(
            in_dir,
            on_status,
            status_every,
            out_dir,
            engine,
            model,
            cfg or WatchConfig(),
            enhance or EnhanceConfig(),
            stop or threading.Event(),
            on_frame,
        )
        return run.run()
