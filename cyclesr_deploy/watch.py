"""Acquisition mode: enhance TIFF frames as the microscope writes them into a folder.

:func:`watch_folder` runs two threads:

* the **scanner** (background thread) lists the input folder (``os.scandir``) every
  ``poll`` seconds (and at once on a filesystem event when the optional ``watchdog`` package
  is installed and ``use_events``). It decides when pages are complete (below) and appends
  references to them, in the order they became complete, to the backlog;
* the **worker** (the calling thread, where the engine was entered) takes one page at a
  time, reads it, enhances it (:class:`~cyclesr_deploy.runner.FrameRunner`) and writes
  it. Only the page being processed is in memory: the backlog holds (file, page) references,
  the pixels stay on disk, so memory is bounded however far behind the engine is.

Completeness (never read a half-written file). A file is parsed page by page with tifffile;
page *k* counts as complete when its IFD parses, its pixel data lie inside the file and
either a later page's IFD already exists (sequential writers append IFD + data page by page)
or the file's size and mtime have not changed for ``stable`` seconds. Any parse or
permission error (Windows refuses reads of a file being written) means "not ready yet". A file
that stays stable but incomplete (truncated) is reported (log, status, manifest
``incomplete``) and watched again if it changes.

Files. A file whose TIFF metadata announce one frame (or holds one page and announces
nothing) is a frame file: its output is written with :func:`~cyclesr_deploy.frames.write_frames`
(``name.part`` then renamed; metadata carried over). Any other file is a growing stack: its
enhanced pages are appended to ``OUT/name.part`` as they complete, and the ``.part`` is
renamed to ``OUT/name`` when the announced number of pages is reached, after ``idle``
seconds without growth, or when the watch stops; so an output is never observed half
written. If the stack grows again later, the pages so far are copied into a new ``.part``
and the new pages appended (stack outputs are plain shaped TIFFs: pages + resolution tags).

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
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from pydantic import BaseModel, ConfigDict, Field

from cyclesr_deploy import __version__
from cyclesr_deploy.engines.base import Engine
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.frames import open_frames, output_info, write_frames
from cyclesr_deploy.io import atomic_path
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.pipeline import MANIFEST_NAME, TIFF_SUFFIXES, EnhanceConfig
from cyclesr_deploy.runner import FrameRunner

__all__ = [
    "PageProbe",
    "WatchConfig",
    "WatchStatus",
    "probe_pages",
    "watch_folder",
]

log = logging.getLogger(__name__)
_LATENCY_WINDOW = 2000  # latencies kept for the percentiles
_RATE_WINDOW_S = 10.0


class WatchConfig(BaseModel):
    """Settings of ``cyclesr watch`` (besides the per-frame :class:`EnhanceConfig`).

    ``poll``: seconds between folder scans; ``stable``: seconds a file's size must stay the
    same before its last page counts as complete; ``idle``: seconds without growth after
    which a stack's output is closed (renamed); ``when_behind``: ``queue`` or ``latest``;
    ``queue_size``: backlog (pages) above which a warning is logged; ``use_events``: wake on
    watchdog events when installed (polling always runs); ``exit_idle``: stop by itself
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
    over the last 10 s, the engine's name."""

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

    def line(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        return (
            f"in {self.seen}, done {self.done}, queued {self.queued}, skipped {self.skipped}, "
            f"failed {self.failed}, incomplete {self.incomplete}; latency p50 {ms(self.p50)} "
            f"p95 {ms(self.p95)}; {self.fps:.2f} frames/s; {self.backend}"
        )


# --- completeness ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PageProbe:
    """What :func:`probe_pages` found: ``size``/``mtime_ns`` of the file, ``complete`` pages
    whose IFD parsed and whose data lie inside the file (consecutive from page 0),
    ``more``: a further page's IFD exists (so all ``complete`` pages are final), ``expected``:
    the page count announced by the metadata (None: not announced), ``error``: why nothing
    could be parsed (None when the file parsed)."""

    size: int
    mtime_ns: int
    complete: int
    more: bool
    expected: int | None
    shape: tuple[int, int] | None = None
    dtype: str | None = None
    error: str | None = None


def _announced_pages(tif: tifffile.TiffFile) -> int | None:
    """Frames announced by the metadata of the first page (shaped, ImageJ or OME-XML)."""
    with contextlib.suppress(Exception):
        if tif.is_ome:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata or "")
            for el in root.iter():
                if el.tag.rsplit("}", 1)[-1] == "Pixels":
                    n = 1
                    for key in ("SizeZ", "SizeT", "SizeC"):
                        n *= int(el.get(key, "1"))
                    return n
    with contextlib.suppress(Exception):
        if tif.is_imagej and tif.imagej_metadata:
            return int(tif.imagej_metadata.get("images", 1))
    with contextlib.suppress(Exception):
        if tif.is_shaped and tif.shaped_metadata:
            shape = tif.shaped_metadata[0]["shape"]
            return int(math.prod(shape[:-2])) if len(shape) > 2 else 1
    return None


def probe_pages(path: str | Path, limit: int | None = None) -> PageProbe:
    """Parse ``path`` page by page (at most ``limit`` + 1 IFDs) without reading pixels; see
    :class:`PageProbe`. Never raises for a file being written: errors are in ``error``."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        return PageProbe(-1, -1, 0, False, None, error=f"{type(exc).__name__}: {exc}")
    size, mtime = st.st_size, st.st_mtime_ns
    tl = logging.getLogger("tifffile")
    level = tl.level
    tl.setLevel(logging.CRITICAL)  # a truncated IFD chain is expected here, not an error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(path) as tif:
                expected = _announced_pages(tif)
                n, more, shape, dtype = 0, False, None, None
                stop_at = limit if limit is not None else expected
                while True:
                    try:
                        page = tif.pages[n]
                    except Exception:  # IndexError, TiffFileError: not there yet
                        break
                    if page is None:
                        break
                    if stop_at is not None and n >= stop_at:
                        more = True
                        break
                    plane = tuple(s for s in page.shape if s != 1)
                    if getattr(page, "samplesperpixel", 1) != 1 or len(plane) != 2:
                        return PageProbe(
                            size, mtime, n, False, expected, shape, dtype,
                            error=f"page {n}: not a single-channel 2-D image (shape {page.shape})",
                        )  # fmt: skip
                    if shape is None:
                        shape, dtype = plane, str(np.dtype(page.dtype))
                    elif plane != shape:
                        more = True  # a different image (thumbnail, new series): stop here
                        break
                    offsets, counts = page.dataoffsets, page.databytecounts
                    if not offsets or not counts:
                        break
                    if max(o + c for o, c in zip(offsets, counts, strict=False)) > size:
                        break
                    n += 1
                # a page IFD after the complete ones: those are final (sequential writers)
                with contextlib.suppress(Exception):
                    if not more and len(tif.pages) > n:
                        more = True
                return PageProbe(size, mtime, n, more, expected, shape, dtype)
    except Exception as exc:  # anything: not (yet) a readable TIFF
        return PageProbe(size, mtime, 0, False, None, error=f"{type(exc).__name__}: {exc}")
    finally:
        tl.setLevel(level)


def _read_page(path: Path, index: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tifffile.TiffFile(path) as tif:
            data = tif.pages[index].asarray()
    data = np.asarray(data).reshape(tuple(s for s in data.shape if s != 1))
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data


# --- manifest ------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Manifest:
    """``cyclesr-manifest.json`` in the format of ``cyclesr enhance`` (one entry per input,
    keyed by absolute path), saved atomically, at most every ``interval`` s unless forced."""

    def __init__(self, out_dir: Path, header: dict[str, Any], interval: float = 1.0) -> None:
        self.path = out_dir / MANIFEST_NAME
        self.files: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.files = dict(json.loads(self.path.read_text(encoding="utf-8"))["files"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(
                    f"{self.path}: not a valid manifest ({exc}); move or delete it"
                ) from exc
        self.header = header
        self.interval = interval
        self._saved = 0.0
        self._dirty = False

    def entry(self, path: Path) -> dict[str, Any] | None:
        return self.files.get(str(path.resolve()))

    def update(self, path: Path, **values: Any) -> None:
        key = str(path.resolve())
        entry = self.files.setdefault(key, {"input": str(path)})
        entry.update(values, finished=_now())
        self._dirty = True

    def save(self, force: bool = False) -> None:
        if not self._dirty or (not force and time.monotonic() - self._saved < self.interval):
            return
        data = {**self.header, "updated": _now(), "files": self.files}
        with atomic_path(self.path) as part:
            part.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        self._saved, self._dirty = time.monotonic(), False


# --- state -------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Source:
    path: Path
    out: Path
    seq: int
    size: int = -1
    mtime_ns: int = -1
    changed_at: float = 0.0
    probed: tuple[int, int] | None = None  # (size, mtime) of the last probe
    probed_stable: bool = False
    expected: int | None = None
    queued_to: int = 0  # pages < queued_to are in the backlog, done or skipped
    done: int = 0  # pages in the output (written)
    skipped: list[int] = field(default_factory=list)
    frame_file: bool | None = None  # None: undecided
    closed: bool = False  # output renamed and nothing more expected
    incomplete: str | None = None
    failed: str | None = None
    part_writer: Any = None  # tifffile.TiffWriter of the open stack output
    resolution: dict[str, Any] | None = None  # output resolution tags of a stack
    observed: int = 0  # pages whose data were seen complete
    arrivals: dict[int, float] = field(default_factory=dict)
    out_pages: int = 0  # pages in the open .part
    t0: float = 0.0
    seconds: float = 0.0


@dataclass(eq=False)
class _Item:
    src: _Source
    page: int
    arrival: float


@dataclass(eq=False)
class _Close:
    src: _Source


class _Watch:
    def __init__(
        self,
        in_dir: Path,
        out_dir: Path,
        engine: Engine,
        model: ModelConfig,
        cfg: WatchConfig,
        ecfg: EnhanceConfig,
        stop: threading.Event,
        on_status: Callable[[WatchStatus], None] | None,
        status_every: float,
        on_frame: Callable[[Path, int, float], None] | None = None,
    ) -> None:
        self.on_frame = on_frame
        self.in_dir, self.out_dir = in_dir, out_dir
        self.engine, self.model, self.cfg = engine, model, cfg
        self.proc = FrameRunner(engine, model, ecfg)
        self.stop = stop
        self.on_status, self.status_every = on_status, status_every
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.work = threading.Condition(self.lock)
        self.backlog: collections.deque[_Item | _Close] = collections.deque()
        self.ready: list[tuple[float, int, float, _Item | _Close]] = []
        self.sources: dict[str, _Source] = {}
        self.seq = 0
        self.seen = self.done = self.skipped = self.failed = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)
        self.done_times: collections.deque[float] = collections.deque()
        self.t_start = time.perf_counter()
        self.last_activity = self.t_start
        self.warned_backlog = False
        self.scanner_error: BaseException | None = None
        self.manifest = _Manifest(
            out_dir,
            {
                "schema_version": "1",
                "tool": f"cyclesr-deploy {__version__}",
                "model": model.name,
                "engine": engine.name,
                "config": ecfg.model_dump(mode="json"),
                "watch": cfg.model_dump(mode="json"),
            },
        )

    # --- scanner ------------------------------------------------------------------------------
    def _new_source(self, path: Path) -> _Source:
        out = self.out_dir / path.name
        src = _Source(path, out, self.seq)
        self.seq += 1
        entry = self.manifest.entry(path) or {}
        if out.exists():
            try:
                with tifffile.TiffFile(out) as tif:
                    src.done = len(tif.pages)
            except Exception:  # unreadable output: leave it, report
                src.failed = f"{out} exists but cannot be read; move it to re-process"
            skipped = list(entry.get("skipped_pages") or [])
            src.skipped = skipped
            src.queued_to = src.done + len(skipped)
            if "next_page" in entry and entry.get("frames") == src.done:
                src.queued_to = int(entry["next_page"])
            src.out_pages = src.done
        elif entry.get("status") == "skipped":
            src.skipped = list(entry.get("skipped_pages") or [0])
            src.queued_to = int(entry.get("next_page", 1))
        return src

    def _scan(self, now: float) -> None:
        try:
            entries = list(os.scandir(self.in_dir))
        except OSError as exc:
            log.warning("cannot list %s: %s (retrying)", self.in_dir, exc)
            return
        found = []
        for e in entries:
            name = e.name
            if name.startswith(".") or not name.lower().endswith(TIFF_SUFFIXES):
                continue
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except OSError:
                continue
            found.append((st.st_mtime_ns, name, e.path, st))
        found.sort()  # new files get their arrival rank by mtime, then name
        for _mtime, name, path, st in found:
            src = self.sources.get(name)
            if src is None:
                src = self.sources[name] = self._new_source(Path(path))
                self.last_activity = now
            if (st.st_size, st.st_mtime_ns) != (src.size, src.mtime_ns):
                src.size, src.mtime_ns, src.changed_at = st.st_size, st.st_mtime_ns, now
                src.probed_stable = False
                self.last_activity = now

    def _update(self, src: _Source, now: float) -> float | None:
        """Probe ``src`` when needed and queue its complete pages; returns when it should be
        looked at again (a stability deadline) or None."""
        if src.failed and src.frame_file is not False:
            return None
        stable = now - src.changed_at >= self.cfg.stable
        key = (src.size, src.mtime_ns)
        if src.probed == key and (src.probed_stable or not stable):
            return None if src.probed_stable else src.changed_at + self.cfg.stable
        probe = probe_pages(src.path)
        if (probe.size, probe.mtime_ns) != key:  # changed since the scan
            src.size, src.mtime_ns, src.changed_at = probe.size, probe.mtime_ns, now
            src.probed_stable = False
            return now + self.cfg.stable
        src.probed, src.probed_stable = key, stable
        src.expected = probe.expected
        if probe.error is not None and probe.complete == 0:
            if stable:
                self._incomplete(src, f"not a readable TIFF yet ({probe.error})")
            return None if stable else src.changed_at + self.cfg.stable
        n = probe.complete
        if probe.expected is not None:
            n = min(n, probe.expected)
        final = n if (stable or probe.more) else max(0, n - 1)
        if src.frame_file is None:
            if probe.expected is not None:
                src.frame_file = probe.expected == 1
            elif n > 1 or probe.more:
                src.frame_file = False
            elif n == 1 and stable:
                src.frame_file = True
        if src.frame_file is None:
            final = 0  # one page, nothing announced: frame file or stack? wait for stability
        for page in range(src.observed, probe.complete):
            src.arrivals[page] = src.changed_at  # when its last bytes were seen
        src.observed = max(src.observed, probe.complete)
        if final > src.queued_to:
            src.closed = False
            for page in range(src.queued_to, final):
                arrival = src.arrivals.pop(page, src.changed_at)
                self.ready.append((arrival, src.seq, page, _Item(src, page, arrival)))
                self.seen += 1
            src.queued_to = final
        if stable:
            wanted = probe.expected
            if wanted is not None and src.queued_to < wanted:
                self._incomplete(src, f"truncated: {probe.complete} of {wanted} page(s) complete")
            elif wanted is None and probe.complete == 0:
                self._incomplete(src, "truncated: no complete page")
            elif src.incomplete:
                src.incomplete = None
        if (
            src.frame_file is False
            and not src.closed
            and src.queued_to > 0
            and (src.expected is not None and src.queued_to >= src.expected)
        ):
            self.ready.append((src.changed_at, src.seq, math.inf, _Close(src)))
            src.closed = True
        return None if stable else src.changed_at + self.cfg.stable

    def _incomplete(self, src: _Source, why: str) -> None:
        if src.incomplete != why:
            src.incomplete = why
            log.warning("%s: %s; waiting for it to be completed", src.path.name, why)
            self.manifest.update(
                src.path,
                status="incomplete",
                error=why,
                input_size=src.size,
                input_mtime_ns=src.mtime_ns,
                frames=src.done,
                next_page=src.queued_to,
                output=str(src.out) if src.done else None,
            )

    def _idle_stacks(self, now: float) -> None:
        for src in self.sources.values():
            if (
                src.frame_file is False
                and not src.closed
                and src.queued_to > 0
                and now - src.changed_at >= self.cfg.idle
            ):
                self.ready.append((src.changed_at, src.seq, math.inf, _Close(src)))
                src.closed = True

    def _release(self, now: float) -> None:
        """Move ready pages to the backlog in arrival order: a page is held while another
        file, changed before the page arrived, may still turn out complete (for at most
        ``stable`` s), so that the backlog is in the order the data landed."""
        if not self.ready:
            return
        self.ready.sort(key=lambda r: r[:3])
        unstable = [
            (s.changed_at, s.seq)
            for s in self.sources.values()
            if now - s.changed_at < self.cfg.stable and not s.failed
        ]
        keep = []
        for entry in self.ready:
            arrival, seq = entry[0], entry[1]
            if keep or any(t <= arrival and q != seq for t, q in unstable):
                keep.append(entry)  # held, and everything after it too (order)
            else:
                self.backlog.append(entry[3])
                self.work.notify()
        self.ready = keep

    def _scanner(self) -> None:
        try:
            while not self.stop.is_set():
                now = time.perf_counter()
                with self.lock:
                    self._scan(now)
                    due = now + self.cfg.poll
                    for src in sorted(self.sources.values(), key=lambda s: s.seq):
                        deadline = self._update(src, now)
                        if deadline is not None:
                            due = min(due, max(deadline, now + 0.005))
                    self._idle_stacks(now)
                    self._release(now)
                    n_frames = self._queued()
                    if n_frames > self.cfg.queue_size and not self.warned_backlog:
                        self.warned_backlog = True
                        log.warning(
                            "falling behind: %d frames waiting (> %d); nothing is dropped%s",
                            n_frames,
                            self.cfg.queue_size,
                            "" if self.cfg.when_behind == "latest" else " (--when-behind queue)",
                        )
                    elif n_frames <= self.cfg.queue_size // 2:
                        self.warned_backlog = False
                    self.manifest.save()
                self.wake.wait(max(0.0, due - time.perf_counter()))
                self.wake.clear()
        except BaseException as exc:  # surfaced by the worker
            self.scanner_error = exc
            self.stop.set()
            with self.lock:
                self.work.notify_all()

    # --- worker -------------------------------------------------------------------------------
    def _take(self) -> _Item | _Close | None:
        with self.lock:
            while not self.backlog:
                if self.stop.is_set():
                    return None
                self.work.wait(0.05)
            if self.stop.is_set():
                return None
            if self.cfg.when_behind == "latest":
                newest = None
                for i in range(len(self.backlog) - 1, -1, -1):
                    if isinstance(self.backlog[i], _Item):
                        newest = i
                        break
                if newest is not None and newest > 0:
                    keep: list[_Item | _Close] = []
                    for _ in range(newest):
                        item = self.backlog.popleft()
                        if isinstance(item, _Item):
                            self._skip(item)
                        else:
                            keep.append(item)
                    self.backlog.extendleft(reversed(keep))
            return self.backlog.popleft()

    def _skip(self, item: _Item) -> None:
        src = item.src
        src.skipped.append(item.page)
        self.skipped += 1
        if src.frame_file:
            self.manifest.update(
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
            self._record_stack(src, status="partial")

    def _record_stack(self, src: _Source, status: str) -> None:
        note = None
        if src.skipped:
            status = "partial"
            note = (
                f"{len(src.skipped)} page(s) skipped (--when-behind latest): the output holds "
                "the others; re-run 'cyclesr enhance --overwrite' on it for all pages"
            )
        self.manifest.update(
            src.path,
            status=status,
            output=str(src.out) if src.done else None,
            frames=src.done,
            next_page=src.done + len(src.skipped),
            skipped_pages=src.skipped,
            note=note,
            error=src.incomplete if status == "incomplete" else None,
            input_size=src.size,
            input_mtime_ns=src.mtime_ns,
            seconds=round(src.seconds, 4),
        )

    def _process(self, item: _Item) -> None:
        src = item.src
        t0 = time.perf_counter()
        try:
            if src.frame_file:
                self._process_frame_file(src)
            else:
                self._process_stack_page(src, item.page)
        except Exception as exc:  # per file: reported, the watch goes on
            msg = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            log.error("%s page %d failed: %s", src.path.name, item.page, msg)
            with self.lock:
                self.failed += 1
                src.failed = msg
                self.manifest.update(
                    src.path,
                    status="failed",
                    error=msg,
                    frames=src.done,
                    input_size=src.size,
                    input_mtime_ns=src.mtime_ns,
                )
            return
        t1 = time.perf_counter()
        with self.lock:
            src.seconds += t1 - t0
            self.done += 1
            self.latencies.append(t1 - item.arrival)
            self.done_times.append(t1)
            self.last_activity = t1
            if src.frame_file:
                self.manifest.update(src.path, seconds=round(t1 - t0, 4))
        if self.on_frame is not None:
            self.on_frame(src.path, item.page, t1 - item.arrival)

    def _process_frame_file(self, src: _Source) -> None:
        with open_frames(src.path) as reader:
            info = reader.info
            if info.n_frames != 1:
                raise InputError(f"{src.path}: expected one frame, found {info.n_frames}")
            frame = reader.read(0)
        result = self.proc(frame)
        write_frames(src.out, output_info(info, self.model.scale), [result], overwrite=True)
        with self.lock:
            src.done = 1
            src.closed = True
            self.manifest.update(
                src.path,
                status="done",
                output=str(src.out),
                frames=1,
                next_page=1,
                input_size=src.size,
                input_mtime_ns=src.mtime_ns,
                seconds=round(src.seconds, 4),
                error=None,
                note=None,
            )

    def _open_part(self, src: _Source) -> None:
        part = src.out.with_name(src.out.name + ".part")
        part.unlink(missing_ok=True)
        tw = tifffile.TiffWriter(part, bigtiff=True)
        src.part_writer, src.out_pages = tw, 0
        if src.out.exists():  # the pages of an earlier run or close: copied first
            with tifffile.TiffFile(src.out) as tif:
                for page in tif.pages:
                    self._write_page(src, page.asarray())

    def _write_page(self, src: _Source, data: np.ndarray) -> None:
        kwargs: dict[str, Any] = {"photometric": "minisblack", "contiguous": True}
        if src.out_pages == 0:
            kwargs["metadata"] = {"axes": "QYX"}
            kwargs["software"] = "cyclesr-deploy"
            kwargs.update(src.resolution or {})
        src.part_writer.write(data, **kwargs)
        src.out_pages += 1

    def _process_stack_page(self, src: _Source, page: int) -> None:
        data = _read_page(src.path, page)
        if src.resolution is None:
            src.resolution = _resolution(src.path, self.model.scale)
        result = self.proc(data)
        if src.part_writer is None:
            self._open_part(src)
        self._write_page(src, result)
        with self.lock:
            src.done += 1
            self._record_stack(src, status="partial")

    def _close_stack(self, src: _Source) -> None:
        tw = src.part_writer
        if tw is None:
            return
        src.part_writer = None
        part = src.out.with_name(src.out.name + ".part")
        try:
            tw.close()
            part.replace(src.out)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        with self.lock:
            complete = src.expected is None or src.done + len(src.skipped) >= src.expected
            self._record_stack(src, status="done" if complete else "partial")
            self.manifest.save(force=True)

    def _queued(self) -> int:
        items = sum(isinstance(i, _Item) for i in self.backlog)
        return items + sum(isinstance(r[3], _Item) for r in self.ready)

    def status(self) -> WatchStatus:
        with self.lock:
            now = time.perf_counter()
            while self.done_times and now - self.done_times[0] > _RATE_WINDOW_S:
                self.done_times.popleft()
            window = min(_RATE_WINDOW_S, now - self.t_start)
            lat = np.array(self.latencies) if self.latencies else None
            incomplete = tuple(s.path.name for s in self.sources.values() if s.incomplete)
            return WatchStatus(
                seen=self.seen,
                done=self.done,
                queued=self._queued(),
                skipped=self.skipped,
                failed=self.failed,
                incomplete=len(incomplete),
                p50=float(np.percentile(lat, 50)) if lat is not None else None,
                p95=float(np.percentile(lat, 95)) if lat is not None else None,
                fps=len(self.done_times) / window if window > 0 else 0.0,
                backend=self.engine.name,
                elapsed=now - self.t_start,
                incomplete_files=incomplete,
                stopping=self.stop.is_set(),
            )

    def _cleanup_parts(self) -> None:
        for p in self.out_dir.glob("*.part"):
            if p.name != MANIFEST_NAME + ".part":
                log.info("removing %s left by an interrupted run", p.name)
            p.unlink(missing_ok=True)

    def run(self) -> WatchStatus:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._cleanup_parts()
        observer = self._start_events() if self.cfg.use_events else None
        scanner = threading.Thread(target=self._scanner, name="cyclesr-watch-scan", daemon=True)
        scanner.start()
        next_status = time.perf_counter() + self.status_every
        try:
            while True:
                item = self._take_timed()
                now = time.perf_counter()
                if self.on_status is not None and now >= next_status:
                    self.on_status(self.status())
                    next_status = now + self.status_every
                if item is None:
                    if self.stop.is_set():
                        break
                    if self._idle_exit(now):
                        self.stop.set()
                        break
                    continue
                if isinstance(item, _Close):
                    self._close_stack(item.src)
                else:
                    self._process(item)
        finally:
            self.stop.set()
            self.wake.set()
            scanner.join(timeout=10)
            if observer is not None:
                with contextlib.suppress(Exception):
                    observer.stop()
            for src in list(self.sources.values()):
                with contextlib.suppress(Exception):
                    self._close_stack(src)
            with self.lock:
                self.manifest._dirty = True
                self.manifest.save(force=True)
        if self.scanner_error is not None:
            raise self.scanner_error
        final = self.status()
        if self.on_status is not None:
            self.on_status(final)
        return final

    def _take_timed(self) -> _Item | _Close | None:
        with self.lock:
            if not self.backlog:
                self.work.wait(0.05)
            if not self.backlog:
                return None
        return self._take()

    def _idle_exit(self, now: float) -> bool:
        if self.cfg.exit_idle is None:
            return False
        with self.lock:
            pending = any(
                s.frame_file is False and not s.closed and s.queued_to > 0
                for s in self.sources.values()
            ) or any(
                s.probed != (s.size, s.mtime_ns) or not s.probed_stable
                for s in self.sources.values()
                if not s.incomplete and not s.failed
            )
            return (
                not self.backlog
                and not self.ready
                and not pending
                and now - self.last_activity >= self.cfg.exit_idle
            )

    def _start_events(self) -> Any:
        """Wake the scanner on filesystem events when watchdog is installed (optional)."""
        try:
            from watchdog.events import FileSystemEventHandler  # type: ignore[import-not-found]
            from watchdog.observers import Observer  # type: ignore[import-not-found]
        except ImportError:
            return None
        wake = self.wake

        class _Handler(FileSystemEventHandler):  # type: ignore[misc]
            def on_any_event(self, event: Any) -> None:
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


def _resolution(path: Path, scale: int) -> dict[str, Any]:
    """Resolution tags of the first page, pixels per unit times ``scale`` (empty if none)."""
    with contextlib.suppress(Exception), tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        x, y = tags.get("XResolution"), tags.get("YResolution")
        unit = tags.get("ResolutionUnit")
        if x is not None and y is not None and unit is not None and int(unit.value) != 1:
            (xn, xd), (yn, yd) = x.value, y.value
            return {
                "resolution": ((xn * scale, xd), (yn * scale, yd)),
                "resolutionunit": int(unit.value),
            }
    return {}


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
) -> WatchStatus:
    """Enhance the TIFFs written into ``in_dir`` into ``out_dir`` until ``stop`` is set (or
    ``cfg.exit_idle``); ``engine`` is entered by the caller and runs in this thread.
    ``on_status`` gets a :class:`WatchStatus` every ``status_every`` s and ``on_frame`` gets
    (input path, page, latency s) after each written frame, both from this thread.
    Returns the final status. See the module docstring for completeness, policies, resume."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise InputError(f"IN_DIR {in_dir}: not a folder")
    if in_dir.resolve() == out_dir.resolve():
        raise InputError("the output folder must differ from the watched folder")
    run = _Watch(
        in_dir,
        out_dir,
        engine,
        model,
        cfg or WatchConfig(),
        enhance or EnhanceConfig(),
        stop or threading.Event(),
        on_status,
        status_every,
        on_frame,
    )
    return run.run()
