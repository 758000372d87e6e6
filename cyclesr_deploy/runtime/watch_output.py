"""Watch mode, output side: enhance a queued page and write it (a frame file's output, or the
next page of a growing stack's ``.part``), and record it (see
:mod:`cyclesr_deploy.runtime.watch`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.io import PART_SUFFIX
from cyclesr_deploy.runtime.tiff import (
    StackAppender,
    StackInfo,
    open_frames,
    output_info,
    read_page,
    write_frames,
)
from cyclesr_deploy.runtime.trust_policy import FileTrust, UntrustedFile
from cyclesr_deploy.runtime.watch_scan import Item, Source, State

if TYPE_CHECKING:
    from cyclesr_deploy.trust import FrameTrust

log = logging.getLogger("cyclesr_deploy.runtime.watch")

# A frame's latency, in order: arrival (last bytes seen) -> judged complete -> taken by the
# worker -> read -> enhanced (the frame runner) -> written (output renamed / page appended).
PHASES = ("wait", "queue", "read", "compute", "write")


class Outputs:
    """Turns backlog items into written outputs with ``enhance`` (2-D frame in, enhanced frame
    out: the frame runner); every output goes through :mod:`cyclesr_deploy.runtime.tiff`."""

    def __init__(
        self,
        state: State,
        enhance: Callable[[np.ndarray, int], tuple[np.ndarray, FrameTrust | None]],
        scale: int,
        on_done: Callable[[Item, float, dict[str, float]], None],
        untrusted: str = "warn",
    ) -> None:
        self.state, self.enhance, self.scale, self.on_done = state, enhance, scale, on_done
        self.untrusted = untrusted  # the trust policy (runtime.trust_policy)

    def process(self, item: Item, taken: float) -> None:
        """Read, enhance and write ``item`` (taken from the backlog at ``taken``); its latency
        split (:data:`PHASES`) goes to the manifest (``latency_s``, the file's last page) and
        to ``on_done`` with the rule that judged it complete (``complete_by``)."""
        src = item.src
        if src.refused:  # refused by the trust policy (fail): no more of its pages
            return
        t0 = time.perf_counter()
        try:
            if item.frame is None:
                frame, info = self._read(src, item.page)
            else:  # handed over in memory: a page of a growing stack
                frame, info, item.frame = item.frame, None, None
            t_read = time.perf_counter()
            result, trust = self.enhance(frame, item.page)  # the one call of the frame runner
            t_comp = time.perf_counter()
            result = self._admit(src, item.page, result, trust)
            if info is not None:
                self._write_frame_file(src, info, result)
            else:
                self._append_page(src, result)
        except UntrustedFile as exc:
            self._refused(src, item.page, exc)
            return
        except Exception as exc:  # per file: reported, the watch goes on
            msg = str(exc) if isinstance(exc, (InputError, OSError)) else repr(exc)
            with self.state.lock:
                self.state.fail(src, f"page {item.page}: {msg}", file_level=bool(src.frame_file))
            return
        t1 = time.perf_counter()
        split = dict(
            zip(
                PHASES,
                (
                    item.judged - item.arrival,
                    taken - item.judged,
                    t_read - t0,
                    t_comp - t_read,
                    t1 - t_comp,
                ),
                strict=True,
            )
        )
        with self.state.lock:
            src.seconds += t1 - t0
            values = {"latency_s": {k: round(max(v, 0.0), 4) for k, v in split.items()}}
            if src.frame_file:
                values["seconds"] = round(t1 - t0, 4)
            self.state.manifest.update(src.path, complete_by=item.rule, **values)
        self.on_done(item, t1, split)

    def _admit(
        self, src: Source, page: int, result: np.ndarray, trust: FrameTrust | None
    ) -> np.ndarray:
        """The page to write under the trust policy (raises :class:`UntrustedFile` when the
        policy refuses the file), with the status counters and the manifest's ``trust``
        updated (live: without the per-frame scores, written at the file's end)."""
        if src.trust is None:
            src.trust = FileTrust(self.untrusted, src.path.name, 1 if src.frame_file else None)
            if src.done:  # pages of an earlier run in the output: their records carried on
                with self.state.lock:
                    entry = self.state.manifest.entry(src.path) or {}
                src.trust.restore(entry.get("trust"), below=src.done)
        try:
            out = src.trust.admit(page, result, trust)
        finally:
            with self.state.lock:
                if trust is not None:
                    self.state.last_trust = float(trust.score)
                    self.state.untrusted += not trust.trusted
                    live = src.trust.summary(scores=bool(src.frame_file))
                    self.state.manifest.update(src.path, trust=live)
        if src.frame_file:
            src.trust.report()
        return out

    def _refused(self, src: Source, page: int, exc: UntrustedFile) -> None:
        """Record a file the trust policy refused: a frame file under skip (no output,
        ``skipped``), or any file under fail (no output: a stack's ``.part`` removed, its
        later pages dropped; ``failed``, the watch goes on and exits non-zero)."""
        app, src.appender = src.appender, None
        if app is not None:
            app.abort()
        with self.state.lock:
            if exc.skipped:  # a frame file under skip: no output
                log.warning("%s: %s", src.path.name, exc)
                src.closed = True
                self.state.record(src, "skipped", note=str(exc), output=None, error=None)
                return
            if src.trust is not None:
                src.trust.report()
            src.refused = src.closed = True
            src.done = _pages(src.out)  # an earlier run's complete output, if any, is kept
            self.state.fail(src, f"page {page}: {exc}", file_level=True)
            self.state.manifest.update(
                src.path,
                output=str(src.out) if src.done else None,
                trust=src.trust.summary() if src.trust is not None else None,
            )

    @staticmethod
    def _read(src: Source, page: int) -> tuple[np.ndarray, StackInfo | None]:
        """The frame to enhance, with the file's metadata for a frame file (None for a stack
        page); the input rules and messages of enhance apply to both."""
        if not src.frame_file:
            return read_page(src.path, page), None
        with open_frames(src.path) as reader:
            info = reader.info
            if info.n_frames != 1:
                raise InputError(f"{src.path}: expected one frame, found {info.n_frames}")
            return reader.read(0), info

    def _write_frame_file(self, src: Source, info: StackInfo, result: np.ndarray) -> None:
        annotations = src.trust.metadata if src.trust is not None else None
        out_info = output_info(info, self.scale)
        write_frames(src.out, out_info, [result], overwrite=True, annotations=annotations)
        with self.state.lock:
            src.done = 1
            src.closed = True
            self.state.manifest.update(
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

    def _append_page(self, src: Source, result: np.ndarray) -> None:
        if src.appender is None:
            self._open(src, result.dtype)
        try:
            src.appender.append(result)
        except BaseException:
            app, src.appender = src.appender, None
            app.abort()  # a frame of another shape raises before the appender cleans up
            with self.state.lock:
                self._part_lost(src)
            raise
        with self.state.lock:
            src.done += 1
            self.record_stack(src, status="partial")

    def _part_lost(self, src: Source) -> int:
        """The stack's ``.part`` is gone (a failed append or close): back to the pages its
        output holds. A file's pages after them are queued again (in order: output page k stays
        input page k), so that nothing is left out, in this run or after a restart; pages
        handed over in memory (``in_memory``) cannot be read again: they are lost, counted
        failed (``lost``). Returns the number lost."""
        written = src.done
        try:
            src.done = _pages(src.out)
        except Exception as exc:  # an unreadable earlier output: redo the stack from page 0
            log.error("%s: cannot read %s (%s)", src.path.name, src.out.name, exc)
            src.done = 0
        lost = 0
        if src.in_memory:
            lost = max(written - src.done, 0)
            src.lost += lost
            src.failures += lost
            self.state.done -= lost
            if lost:
                log.error("%s: %d written frame(s) lost with its .part", src.out.name, lost)
        else:
            src.queued_to = src.done + len(src.skipped)
        src.closed = False
        self.state.manifest.update(
            src.path, frames=src.done, next_page=src.queued_to, lost_frames=src.lost or None
        )
        return lost

    def _open(self, src: Source, dtype: np.dtype) -> None:
        if src.info is None:
            raise InputError(f"{src.path}: no metadata read yet")
        app = StackAppender(src.out, output_info(src.info, self.scale, dtype))
        try:
            if src.out.exists():  # the pages of an earlier run or close: copied first
                with open_frames(src.out) as reader:
                    for frame in reader:
                        app.append(frame.data)
        except BaseException:
            app.abort()
            raise
        src.appender = app

    def close_stack(self, src: Source) -> None:
        """Rename the stack's ``.part`` onto its output; a failure (e.g. disk full) is recorded
        as the stack's failure, with the pages its output still holds, and the watch goes on."""
        app, src.appender = src.appender, None
        if app is None:
            return
        if src.info is not None:  # the metadata as far as the input is written now
            latest = output_info(src.info, self.scale, app.info.dtype)
            if latest.frame_shape == app.info.frame_shape:
                app.info = latest
        if src.trust is not None:
            src.trust.report()
            app.annotations = src.trust.metadata()
            with self.state.lock:  # the file's end: every frame's score
                self.state.manifest.update(src.path, trust=src.trust.summary())
        try:
            app.close()
        except Exception as exc:
            with self.state.lock:
                lost = self._part_lost(src)  # in memory: the lost frames are the failure
                self.state.fail(src, str(exc), file_level=False, count=0 if lost else 1)
                self.state.manifest.update(src.path, output=str(src.out) if src.done else None)
                try:
                    self.state.manifest.save(force=True)
                except OSError as save_exc:  # e.g. the same full disk: saved again at the end
                    log.error("%s: manifest not saved: %s", src.path.name, save_exc)
            return
        with self.state.lock:
            complete = src.expected is None or src.done + len(src.skipped) >= src.expected
            self.record_stack(src, status="done" if complete else "partial")  # never over failures
            self.state.manifest.save(force=True)

    def record_stack(self, src: Source, status: str) -> None:
        """The manifest entry of a stack: ``status`` unless pages were skipped (``partial``)
        or failed (``failed``, with the last error)."""
        note = None
        if src.skipped:
            status = "partial"
            note = f"{len(src.skipped)} page(s) skipped " + (
                "(the engine was behind): the output holds the others; enhance the raw frames "
                "pycro-manager saved with 'cyclesr enhance' for all pages"
                if src.in_memory
                else "(--when-behind latest): the output holds the others; re-run "
                "'cyclesr enhance --overwrite' on it for all pages"
            )
        if src.failures:
            status = "failed"
        self.state.manifest.update(
            src.path,
            status=status,
            output=str(src.out) if src.done else None,
            frames=src.done,
            next_page=src.done + len(src.skipped),
            skipped_pages=src.skipped,
            note=note,
            error=src.failed if src.failures else None,
            input_size=src.size,
            input_mtime_ns=src.mtime_ns,
            seconds=round(src.seconds, 4),
        )

    def remove_stale_parts(self, out_dir: Path) -> None:
        """Remove the ``.part`` files of a killed run (this run holds the folder's lock, so no
        other run is writing them)."""
        for p in out_dir.glob("*" + PART_SUFFIX):
            log.info("removing %s left by an interrupted run", p.name)
            p.unlink(missing_ok=True)


def _pages(path: Path) -> int:
    if not path.exists():
        return 0
    with open_frames(path) as reader:
        return reader.info.n_frames
