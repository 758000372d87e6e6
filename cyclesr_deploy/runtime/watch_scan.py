"""Watch mode, input side: what is known of each watched file, and the scanner that finds
complete pages and queues them in arrival order (see :mod:`cyclesr_deploy.runtime.watch`)."""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.runtime.tiff import TIFF_SUFFIXES, StackInfo, open_frames, probe_pages

log = logging.getLogger("cyclesr_deploy.runtime.watch")


@dataclass(eq=False)
class Source:
    """One watched input file and how far it got."""

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
    failures: int = 0  # frames (pages) or files counted as failed
    info: StackInfo | None = None  # the input's metadata (last probe)
    appender: Any = None  # frames.StackAppender of the open stack output
    observed: int = 0  # pages whose data were seen complete
    arrivals: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    renamed: bool = False  # appeared by rename (a filesystem event) and unchanged since
    rule: str | None = None  # the completeness rule that decided the last queued page
    in_memory: bool = False  # pages handed over in memory (acquisition hook): never read again
    lost: int = 0  # written pages lost with a failed .part (in_memory: cannot be redone)
    trust: Any = None  # runtime.trust_policy.FileTrust of its output (frames scored)
    refused: bool = False  # refused by the trust policy (--untrusted fail): no output

    def retry(self) -> None:
        """Forget a failure of a file that changed since (nothing of it was written)."""
        self.failed, self.failures = None, 0
        self.trust, self.refused = None, False
        self.queued_to = self.observed = 0
        self.frame_file = self.expected = None
        self.closed = False


# The completeness rules (which one decided a page: live status and manifest "complete_by").
RULE_RENAMED = "renamed"  # the file appeared by rename: its size is final when it appears
RULE_ANNOUNCED = "announced"  # the metadata's page count is reached, every page inside the file
RULE_NEXT_PAGE = "next-page"  # a later page's IFD exists (sequential writers): this page is final
RULE_STABLE = "stable"  # size and mtime unchanged for ``stable`` s (nothing else can tell)
RULES = (RULE_RENAMED, RULE_ANNOUNCED, RULE_NEXT_PAGE, RULE_STABLE)


@dataclass(eq=False)
class Item:
    src: Source
    page: int
    arrival: float  # when the page's last bytes were seen
    judged: float = 0.0  # when it was judged complete (queued)
    rule: str = RULE_STABLE
    frame: Any = None  # the page's pixels when they come from memory (acquisition hook)


@dataclass(eq=False)
class Close:
    src: Source


class State:
    """What the scanner thread and the worker share, under ``lock``."""

    def __init__(self, out_dir: Path, cfg: Any, manifest: Any) -> None:
        self.out_dir, self.cfg, self.manifest = out_dir, cfg, manifest
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)
        self.wake = threading.Event()
        self.backlog: collections.deque[Item | Close] = collections.deque()
        self.moved: collections.deque[str] = collections.deque()  # names renamed into place
        self.rules: collections.Counter[str] = collections.Counter()  # pages per rule
        self.ready: list[tuple[float, int, float, Item | Close]] = []
        self.sources: dict[str, Source] = {}
        self.seen = self.done = self.skipped = 0
        self.untrusted = 0  # frames the trust policy flagged
        self.last_trust: float | None = None  # the last frame's trust score
        self.last_activity = time.perf_counter()

    @property
    def failed(self) -> int:
        return sum(s.failures for s in self.sources.values())

    def queued(self) -> int:
        items = sum(isinstance(i, Item) for i in self.backlog)
        return items + sum(isinstance(r[3], Item) for r in self.ready)

    def fail(self, src: Source, why: str, *, file_level: bool, count: int = 1) -> None:
        """Record a failure (per page of a stack: ``count`` pages, or of a whole file) in the
        manifest."""
        log.error("%s failed: %s", src.path.name, why)
        src.failed = why
        src.failures = 1 if file_level else src.failures + count
        self.record(src, "failed", error=why)

    def record(self, src: Source, status: str, **values: Any) -> None:
        """The manifest entry of ``src``: ``status``, frames written, the input's identity."""
        self.manifest.update(
            src.path,
            status=status,
            frames=src.done,
            input_size=src.size,
            input_mtime_ns=src.mtime_ns,
            **values,
        )


class Scanner:
    """Lists the input folder, probes files (:func:`~cyclesr_deploy.runtime.tiff.probe_pages`),
    queues complete pages in arrival order, reports incomplete and unusable files."""

    def __init__(self, in_dir: Path, state: State) -> None:
        self.in_dir, self.state, self.cfg = in_dir, state, state.cfg
        self.seq = 0

    def _new_source(self, path: Path) -> Source:
        out = self.state.out_dir / path.name
        src = Source(path, out, self.seq)
        self.seq += 1
        entry = self.state.manifest.entry(path) or {}
        if out.exists():
            try:
                with open_frames(out) as reader:
                    src.done = reader.info.n_frames
            except InputError:  # unreadable output: leave it, report
                src.failed = f"{out} exists but cannot be read; move it to re-process"
                src.failures = 1
            skipped = list(entry.get("skipped_pages") or [])
            src.skipped = skipped
            src.queued_to = src.done + len(skipped)
            if "next_page" in entry and entry.get("frames") == src.done:
                src.queued_to = int(entry["next_page"])
        elif entry.get("status") == "skipped":
            src.skipped = list(entry.get("skipped_pages") or [0])
            src.queued_to = int(entry.get("next_page", 1))
        return src

    def scan(self, now: float) -> None:
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
        sources = self.state.sources
        moved = set()
        while self.state.moved:  # filled by the event thread (deque: thread-safe)
            moved.add(self.state.moved.popleft())
        for _mtime, name, path, st in found:
            src = sources.get(name)
            if src is None:
                src = sources[name] = self._new_source(Path(path))
                self.state.last_activity = now
            if (st.st_size, st.st_mtime_ns) != (src.size, src.mtime_ns):
                if src.failed and src.done == 0 and src.size >= 0 and not src.refused:
                    log.info("%s changed: trying it again", name)
                    src.retry()
                src.size, src.mtime_ns, src.changed_at = st.st_size, st.st_mtime_ns, now
                src.probed_stable = src.renamed = False
                self.state.last_activity = now
            if name in moved:  # renamed into place: final as it is now (until it changes)
                src.renamed = True

    def update(self, src: Source, now: float) -> float | None:
        """Probe ``src`` when needed and queue its complete pages; returns when it should be
        looked at again (a stability deadline) or None."""
        if src.refused or (src.failed and src.frame_file is not False):
            return None
        waited = now - src.changed_at >= self.cfg.stable
        stable = waited or src.renamed  # final: nothing more will be written
        key = (src.size, src.mtime_ns)
        if src.probed == key and (src.probed_stable or not stable):
            return None if src.probed_stable else src.changed_at + self.cfg.stable
        probe = probe_pages(src.path)
        if (probe.size, probe.mtime_ns) != key:  # changed since the scan
            src.size, src.mtime_ns, src.changed_at = probe.size, probe.mtime_ns, now
            src.probed_stable = src.renamed = False
            return now + self.cfg.stable
        src.probed, src.probed_stable = key, stable
        src.expected = probe.expected
        src.info = probe.info or src.info
        if probe.refused is not None or (probe.error is not None and probe.complete == 0):
            if stable:  # stopped changing and is no usable TIFF: the reader's own message
                self.state.fail(src, probe.refused or self._why(src, probe.error), file_level=True)
            return None if stable else src.changed_at + self.cfg.stable
        self._queue(src, probe, now, RULE_STABLE if waited else RULE_RENAMED if stable else None)
        if stable or (src.expected is not None and src.queued_to >= src.expected):
            self._check_complete(src, probe)  # (an announced count reached: complete now)
        if (
            src.frame_file is False
            and not src.closed
            and src.queued_to > 0
            and (
                (src.expected is not None and src.queued_to >= src.expected)
                or (src.renamed and src.queued_to >= probe.complete)
            )
        ):
            self.state.ready.append((src.changed_at, src.seq, math.inf, Close(src)))
            src.closed = True
        return None if stable else src.changed_at + self.cfg.stable

    @staticmethod
    def _why(src: Source, error: str | None) -> str:
        try:
            with open_frames(src.path):
                pass
        except InputError as exc:
            return str(exc)
        return f"{src.path}: not a readable TIFF ({error})"

    def _queue(self, src: Source, probe: Any, now: float, final_rule: str | None) -> None:
        """Queue the pages of ``src`` that are complete; ``final_rule``: the file is final as
        it is (``stable`` or ``renamed``), None while it may still be written."""
        n = probe.complete
        if probe.expected is not None:
            n = min(n, probe.expected)
        announced = probe.expected is not None and n >= probe.expected  # every page inside
        if announced:  # said first: the rule a user can rely on without --stable
            final, rule = n, RULE_ANNOUNCED
        elif final_rule is not None:
            final, rule = n, final_rule
        else:  # the pages before a later page's IFD; the last one only when one follows
            final, rule = (n if probe.more else max(0, n - 1)), RULE_NEXT_PAGE
        stable = final_rule is not None
        if src.frame_file is None:
            if probe.expected is not None:
                src.frame_file = probe.expected == 1
            elif probe.ifds > 1:  # a second page IFD: a stack (one page in pieces is not)
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
                why = rule if page == final - 1 else RULE_NEXT_PAGE
                item = Item(src, page, arrival, now, why)
                self.state.ready.append((arrival, src.seq, page, item))
                self.state.rules[why] += 1
                self.state.seen += 1
            src.queued_to, src.rule = final, rule

    def _check_complete(self, src: Source, probe: Any) -> None:
        wanted = probe.expected
        if wanted is not None and src.queued_to < wanted:
            self._incomplete(src, f"truncated: {probe.complete} of {wanted} page(s) complete")
        elif wanted is None and probe.complete == 0:
            self._incomplete(src, "truncated: no complete page")
        elif src.incomplete:
            src.incomplete = None

    def _incomplete(self, src: Source, why: str) -> None:
        if src.incomplete != why:
            src.incomplete = why
            log.warning("%s: %s; waiting for it to be completed", src.path.name, why)
            self.state.record(
                src,
                "incomplete",
                error=why,
                next_page=src.queued_to,
                output=str(src.out) if src.done else None,
            )

    def idle_stacks(self, now: float) -> None:
        for src in self.state.sources.values():
            if (
                src.frame_file is False
                and not src.closed
                and src.queued_to > 0
                and now - src.changed_at >= self.cfg.idle
            ):
                self.state.ready.append((src.changed_at, src.seq, math.inf, Close(src)))
                src.closed = True

    def release(self, now: float) -> None:
        """Move ready pages to the backlog in arrival order: a page is held while another
        file, changed before the page arrived, holds complete data not judged final yet (for
        at most ``stable`` s), so that the backlog is in the order the data landed. A file
        whose complete pages are all queued holds nothing back: its next page can only
        arrive later."""
        state = self.state
        if not state.ready:
            return
        state.ready.sort(key=lambda r: r[:3])
        unstable = [
            (s.changed_at, s.seq)
            for s in state.sources.values()
            if now - s.changed_at < self.cfg.stable
            and not s.failed
            and (s.probed != (s.size, s.mtime_ns) or s.observed > s.queued_to)
        ]
        keep = []
        for entry in state.ready:
            arrival, seq = entry[0], entry[1]
            if keep or any(t <= arrival and q != seq for t, q in unstable):
                keep.append(entry)  # held, and everything after it too (order)
            else:
                state.backlog.append(entry[3])
                state.work.notify()
        state.ready = keep

    def pending(self) -> bool:
        """Whether a file may still produce work (an open stack, an unsettled file)."""
        sources = self.state.sources.values()
        return any(
            s.frame_file is False and not s.closed and s.queued_to > 0 for s in sources
        ) or any(
            s.probed != (s.size, s.mtime_ns) or not s.probed_stable
            for s in sources
            if not s.incomplete and not s.failed
        )
