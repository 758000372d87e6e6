"""Enhance frames during an acquisition without ever slowing it: a pycro-manager image processor.

    from cyclesr_deploy.runtime.acquisition import AcquisitionHook
    with AcquisitionHook("D:/run1/enhanced", model="reference-cyclegan") as hook:
        with Acquisition(directory="D:/run1", name="cells", image_process_fn=hook) as acq:
            acq.acquire(events)
    # leaving the ``with`` waits for the queue, closes the stacks and reports (hook.report)

The hook (``hook(image, metadata)``, pycro-manager's ``image_process_fn`` signature) copies
the frame into a bounded in-memory queue and returns at once: ``(image, metadata)``
unchanged (``return_image=True``, the default: pycro-manager saves and shows the raw frame)
or None (``return_image=False``: the raw frame is dropped). The engine never runs in the
acquisition thread: a worker thread, which opened and entered the engine, serves the queue
with the machinery of ``cyclesr watch``
(:class:`~cyclesr_deploy.runtime.watch.WatchWorker`: the one frame runner, the same stack
writer, manifest, ``when_behind`` policy and latency accounting).

Outputs: one growing OME-TIFF stack per combination of the metadata's ``Axes`` other than
``time`` and ``z`` (e.g. ``cells_channel-DAPI_position-0.ome.tif``; ``cells.ome.tif`` when only
time/z vary) and frame geometry (frames of another shape or dtype, e.g. after an ROI or
binning change, go to a stack of their own: ``..._30x20-uint16.ome.tif``), its pages in arrival
order (pycro-manager's order: time, then z), axes ``TYX`` (``ZYX`` when the frames have ``z``
and no ``time``), pixel size ``PixelSizeUm`` / scale. Two stacks whose names clash once made
file-safe (``DAPI 1``/``DAPI/1``; ``GFP``/``gfp`` on Windows) get ``_2``, ``_3``, ...
Each is written to ``name.part`` and renamed when the hook closes, so it is never observed half
written; ``cyclesr-manifest.json`` (the format of ``cyclesr watch``, keyed by output; written
by the worker about once a second and at close, the live figures are
:meth:`AcquisitionHook.status`) records per stack the pages written, skipped, failed and lost,
its constant ``axes`` and ``page_axes``: runs of pages with their ``time``/``z`` (``{"pages":
[0, 9], "time": 3, "z": [0, 9]}``). A name already in the folder (an output or a ``.part``
left by a crash) is never overwritten: the run takes ``name_1``, ``name_2``, ...
The hook never raises into the acquisition for one frame: a frame that is not 2-D, or whose
copy fails, is counted failed and returned; a frame the worker fails on (or whose
``on_frame`` raises) too. A stack's ``.part`` lost to a write error loses the frames written
to it (they cannot be read again): they are counted failed (``lost_frames``).

When the engine is slower than the camera (``when_behind``): ``queue`` (default) enhances
every frame in order, holding at most ``queue_size`` frames in memory; when the queue is full,
``when_full="skip"`` (default) records the new frame as skipped (never enhanced, its raw frame
still saved by pycro-manager, so ``cyclesr enhance`` can do it later) and the acquisition goes
on at full speed, while ``when_full="wait"`` makes the acquisition wait for room (nothing
skipped, the camera slowed). ``latest`` always enhances the newest frame: a new frame skips
the one waiting (live viewing; at most one frame waits, whatever ``queue_size``). Skips are
counted, warned about and written to the manifest.

:meth:`AcquisitionHook.close` (or leaving ``with``) refuses new frames, waits until the queue
is done, closes the stacks, releases the output folder and returns the final
:class:`~cyclesr_deploy.runtime.watch.WatchStatus` (``report``; ``ok`` is False when a frame
failed, and ``errors`` says why); :meth:`flush` only waits for the queue.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cyclesr_deploy.engines.base import Engine
from cyclesr_deploy.io import PART_SUFFIX
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.runtime.enhancer import open_model
from cyclesr_deploy.runtime.manifest import OutputLock
from cyclesr_deploy.runtime.runner import EnhanceConfig
from cyclesr_deploy.runtime.tiff import StackInfo
from cyclesr_deploy.runtime.watch import WatchConfig, WatchStatus, WatchWorker
from cyclesr_deploy.runtime.watch_scan import Item, Source, State

__all__ = ["HOOK_COMMAND", "AcquisitionHook", "HookConfig"]

log = logging.getLogger(__name__)

HOOK_COMMAND = "cyclesr acquisition hook"  # how the hook names itself to a run refused its folder
RULE_HOOK = "hook"  # manifest "complete_by": handed over by the acquisition
STACKED_AXES = ("time", "z")  # pycro-manager axes stacked into one file; the others split files
OUTPUT_SUFFIX = ".ome.tif"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = Item(None, -1, 0.0, frame=True)  # type: ignore[arg-type]  # a buffer being filled
_Slot = tuple[np.ndarray, Item | None]
_Key = tuple[tuple[tuple[str, str], ...], tuple[int, ...], str]  # named axes, shape, dtype


class HookConfig(BaseModel):
    """Settings of :class:`AcquisitionHook` (see the module docstring): ``name`` of the
    output stacks, ``when_behind`` queue|latest, ``queue_size`` (frames held in memory at
    most), ``when_full`` skip|wait (``queue`` with a full queue), ``return_image``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="acquisition", min_length=1)
    when_behind: Literal["queue", "latest"] = "queue"
    queue_size: int = Field(default=64, ge=1)
    when_full: Literal["skip", "wait"] = "skip"
    return_image: bool = True


class AcquisitionHook:
    """A pycro-manager ``image_process_fn`` that enhances frames in a worker thread and writes
    them to ``out_dir`` (see the module docstring).

    ``model``: a model folder or built-in name (None: the default); ``backend``, ``precision``,
    ``device`` and ``enhance`` (:class:`EnhanceConfig`) are those of ``cyclesr enhance``;
    ``engine``/``model_config`` inject an engine (not entered) and config, e.g. for tests.
    The engine is opened and entered in the worker thread; an error doing so is raised here.
    ``on_frame(output path, page, latency s)`` is called from the worker after each frame.
    """

    def __init__(
        self,
        out_dir: str | Path,
        model: str | Path | None = None,
        backend: str = "auto",
        *,
        precision: str = "default",
        device: str = "auto",
        config: HookConfig | None = None,
        enhance: EnhanceConfig | None = None,
        engine: Engine | None = None,
        model_config: ModelConfig | None = None,
        on_frame: Callable[[Path, int, float], None] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.cfg = config or HookConfig()
        ecfg = enhance or EnhanceConfig()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._closing = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._warned_full = False
        self._buffers = _BufferPool()
        self.worker: WatchWorker | None = None
        self.report: WatchStatus | None = None
        self._lock = OutputLock(self.out_dir, command=HOOK_COMMAND)
        self._lock.acquire()  # InputError when another run writes there
        try:  # any error from here on frees the folder again
            self.name = _free_name(self.out_dir, self.cfg.name)
            self._stacks = _Stacks(self.out_dir, self.name)
            self._start(model, backend, precision, device, ecfg, engine, model_config, on_frame)
        except BaseException:
            self._lock.release()
            raise

    def _start(
        self,
        model: str | Path | None,
        backend: str,
        precision: str,
        device: str,
        ecfg: EnhanceConfig,
        engine: Engine | None,
        model_config: ModelConfig | None,
        on_frame: Callable[[Path, int, float], None] | None,
    ) -> None:
        """Open the model (unless injected) and start the worker thread; its error raised."""
        if engine is None or model_config is None:
            engine, loaded = open_model(
                model, backend, ecfg, precision=precision, device=device, engine=engine
            )
            model_config = model_config or loaded
        self._thread = threading.Thread(
            target=self._serve,
            args=(engine, model_config, ecfg, on_frame),
            name="cyclesr-acquisition",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    # --- the acquisition thread ---------------------------------------------------------------
    def __call__(self, image: np.ndarray, metadata: dict[str, Any]) -> Any:
        """pycro-manager's image processor: queue a copy of ``image`` and return at once."""
        arrival = time.perf_counter()
        worker = self.worker
        if self._closing.is_set() or worker is None:
            raise RuntimeError("the acquisition hook is closed")
        returned = (image, metadata) if self.cfg.return_image else None
        pixels = np.asarray(image)
        axes = dict((metadata or {}).get("Axes") or {})
        src = self._stacks.source(axes, metadata or {}, pixels, worker.state)
        state = worker.state
        if pixels.ndim != 2:
            self._reject(src, axes, f"expected a 2-D frame (H, W), got shape {pixels.shape}")
            return returned
        slots: list[_Slot] | None = None
        try:
            with state.lock:
                slots, k = self._buffers.reserve(pixels)
            buffer = slots[k][0]
            np.copyto(buffer, pixels)  # the acquisition may reuse its buffer: ours from now on
        except Exception as exc:  # e.g. out of memory: this frame fails, the acquisition goes on
            if slots is not None:
                with state.lock:
                    slots[k] = (slots[k][0], None)
            self._reject(src, axes, f"copying the frame failed: {exc!r}")
            return returned
        with state.lock:
            item = Item(src, self._page(src, axes), arrival, arrival, RULE_HOOK, buffer)
            slots[k] = (buffer, item)
            state.seen += 1
            self._admit(item)
        return returned

    image_process_fn = __call__

    def _admit(self, item: Item) -> None:
        """Put ``item`` in the backlog under the ``when_behind``/``when_full`` policy (called
        with the state's lock held)."""
        assert self.worker is not None
        state, backlog = self.worker.state, self.worker.backlog
        if self.cfg.when_behind == "latest":  # only the newest waits: the others never run
            while state.backlog:
                backlog.skip(state.backlog.popleft())  # type: ignore[arg-type]
        elif len(state.backlog) >= self.cfg.queue_size:
            if self.cfg.when_full == "skip":
                self._warn_full("skipping new frames (when_full='skip')")
                backlog.skip(item)
                return
            else:
                self._warn_full("the acquisition waits for room (when_full='wait')")
                while len(state.backlog) >= self.cfg.queue_size and self._thread.is_alive():
                    state.lock.release()
                    try:
                        time.sleep(0.002)
                    finally:
                        state.lock.acquire()
        state.backlog.append(item)
        state.work.notify_all()

    def _page(self, src: Source, axes: dict[str, Any]) -> int:
        """The next page number of ``src``, its ``time``/``z`` added to its page_axes (called
        with the state's lock held)."""
        page = src.queued_to
        src.queued_to += 1
        _add_page(self._stacks.runs[src.seq], page, {k: axes[k] for k in STACKED_AXES if k in axes})
        return page

    def _reject(self, src: Source, axes: dict[str, Any], why: str) -> None:
        """Count a frame that cannot be queued as failed (never raised into the acquisition)."""
        assert self.worker is not None
        state = self.worker.state
        with state.lock:
            state.seen += 1
            state.fail(src, f"page {self._page(src, axes)}: {why}", file_level=False)

    def _warn_full(self, what: str) -> None:
        if not self._warned_full:
            self._warned_full = True
            log.warning(
                "the engine is behind: %d frames queued (queue_size); %s",
                self.cfg.queue_size,
                what,
            )

    # --- the worker thread --------------------------------------------------------------------
    def _serve(
        self,
        engine: Engine,
        model: ModelConfig,
        ecfg: EnhanceConfig,
        on_frame: Callable[[Path, int, float], None] | None,
    ) -> None:
        try:
            with engine as entered:
                wcfg = WatchConfig(
                    when_behind=self.cfg.when_behind,
                    queue_size=self.cfg.queue_size,
                    use_events=False,
                )
                worker = WatchWorker(self.out_dir, entered, model, wcfg, ecfg, self._stop, on_frame)
                worker.state.manifest.header["acquisition"] = self.cfg.model_dump(mode="json")
                self.worker = worker
                self._ready.set()
                try:
                    self._loop(worker)
                finally:
                    worker.close_outputs()
        except BaseException as exc:
            if not self._ready.is_set():
                self._error = exc
            else:
                log.error("the acquisition hook's worker stopped: %r", exc)
        finally:
            self._ready.set()

    def _loop(self, worker: WatchWorker) -> None:
        state = worker.state
        while True:
            item = worker.backlog.take(self._stop)
            taken = time.perf_counter()
            if item is None:
                if self._stop.is_set():
                    return
                with state.lock:
                    if self._closing.is_set() and not state.backlog:
                        return
                self._save_manifest(state)
                continue
            self._buffers.in_flight = item  # its buffer stays taken until handled
            try:
                worker.handle(item, taken)
            except Exception as exc:  # e.g. on_frame raised: this frame's failure, not the run's
                with state.lock:
                    why = f"page {item.page}: {exc!r}"
                    state.fail(item.src, why, file_level=False)  # type: ignore[union-attr]
            finally:
                self._buffers.in_flight = None
            self._save_manifest(state)

    @staticmethod
    def _save_manifest(state: Any) -> None:
        """Write the manifest when due (about once a second): a snapshot taken under the lock
        the hook takes, written outside it, so a crash loses at most the last second."""
        with state.lock:
            text = state.manifest.snapshot()
        if text is not None:
            try:
                state.manifest.write(text)
            except OSError as exc:  # e.g. a full disk: tried again, and at close
                log.error("acquisition hook: manifest not saved: %s", exc)

    # --- results --------------------------------------------------------------------------------
    def settled(self) -> bool:
        """Whether every frame handed over so far is written, skipped or failed."""
        if self.worker is None:
            return True
        state = self.worker.state
        with state.lock:
            return state.done + state.skipped + state.failed >= state.seen

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queue is done (every frame so far written, skipped or failed);
        False when ``timeout`` s passed first or the worker stopped."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.settled():
            if not self._thread.is_alive():
                return False
            if deadline is not None and time.perf_counter() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def status(self) -> WatchStatus | None:
        """The live :class:`WatchStatus` (frames seen, done, queued, skipped, failed, latency)."""
        return self.report if self.worker is None else self.worker.status()

    @property
    def errors(self) -> list[str]:
        """``output name: why`` of each stack with a failed frame."""
        return [f"{s.out.name}: {s.failed}" for s in self._stacks.sources.values() if s.failed]

    def close(self, *, drain: bool = True) -> WatchStatus:
        """Refuse new frames, wait for the queue (``drain=False``: skip what still waits),
        close the stacks, release the folder; the final status (also ``self.report``).
        Failed frames are logged with why (``errors``) and make ``report.ok`` False."""
        if self.report is not None:
            return self.report
        self._closing.set()
        if not drain:
            self._stop.set()
        self._thread.join()
        worker = self.worker
        try:
            if worker is None:
                raise RuntimeError("the acquisition hook's worker never started")
            with worker.state.lock:
                while worker.state.backlog:  # left by drain=False or a stopped worker
                    worker.backlog.skip(worker.state.backlog.popleft())  # type: ignore[arg-type]
                worker.state.manifest.save(force=True)
            self.report = worker.status()
            self.worker = None
        finally:
            self._lock.release()
        for error in self.errors:
            log.error("acquisition hook: %s", error)
        return self.report

    def __enter__(self) -> AcquisitionHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Stacks:
    """The hook's output stacks, made in the acquisition thread (the only one that reads
    ``sources``): one per named ``Axes`` (other than time/z) and frame geometry, with a
    file-safe name unique in this run in any letter case, and its ``page_axes`` runs."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self.out_dir, self.name = out_dir, name
        self.sources: dict[_Key, Source] = {}
        self.runs: dict[int, list[dict[str, Any]]] = {}  # per source seq: its page_axes
        self._names: set[str] = set()  # file names of this run's stacks, casefolded

    def source(
        self, axes: dict[str, Any], metadata: dict[str, Any], frame: np.ndarray, state: State
    ) -> Source:
        """The output stack of a frame with ``axes`` and the frame's geometry (made at its
        first frame and added to ``state``)."""
        named = tuple(sorted((str(k), str(v)) for k, v in axes.items() if k not in STACKED_AXES))
        key: _Key = (named, frame.shape, frame.dtype.str)
        src = self.sources.get(key)
        if src is None:
            src = self._new_source(key, axes, metadata, frame, state)
        return src

    def _new_source(
        self,
        key: _Key,
        axes: dict[str, Any],
        metadata: dict[str, Any],
        frame: np.ndarray,
        state: State,
    ) -> Source:
        named = key[0]
        parts = [self.name, *(f"{k}-{v}" for k, v in named)]
        if frame.ndim != 2 or any(  # a new geometry: its own stack (never the plain name)
            other[0] == named and len(other[1]) == 2 for other in self.sources
        ):
            parts.append("x".join(map(str, frame.shape)) + f"-{frame.dtype.name}")
        out = self.out_dir / (self._unique(_UNSAFE.sub("_", "_".join(parts))) + OUTPUT_SUFFIX)
        info = None
        if frame.ndim == 2:  # other frames fail before they are queued
            pixel = metadata.get("PixelSizeUm")
            info = StackInfo(
                path=None,
                axes=("Z" if "z" in axes and "time" not in axes else "T") + "YX",
                shape=(1, *frame.shape),
                dtype=frame.dtype,
                kind="ome",
                pixel_size_um=float(pixel) if pixel else None,
            )
        src = Source(out, out, len(self.sources), frame_file=False, info=info, in_memory=True)
        state.manifest.entry(out)  # resolves the entry's key once, outside the lock
        runs: list[dict[str, Any]] = []
        constant = {k: _plain(v) for k, v in axes.items() if k not in STACKED_AXES}
        with state.lock:
            self.runs[src.seq] = runs
            state.sources[out.name] = src
            state.manifest.update(out, axes=constant, page_axes=runs)  # the live list
        self.sources[key] = src
        return src

    def _unique(self, stem: str) -> str:
        """``stem``, or ``stem_2``, ``stem_3``, ... when this run already has a stack of that
        name in any letter case (Windows: one file)."""
        candidate, n = stem, 1
        while candidate.casefold() in self._names:
            n += 1
            candidate = f"{stem}_{n}"
        self._names.add(candidate.casefold())
        return candidate


class _BufferPool:
    """Frame buffers for the hook's copies, per frame shape and dtype, reused once their frame
    is enhanced or skipped, so that a copy lands in memory already paged in (a fresh 8 MB
    buffer costs ~2000 page faults: p99 x10 on a busy machine). As many buffers as frames are
    held at once (the queue, the frame in the worker, the one being copied); numpy, no
    library pools numpy buffers across threads like this (hand-written, ~20 lines)."""

    def __init__(self) -> None:
        self.slots: dict[tuple[tuple[int, ...], str], list[_Slot]] = {}
        self.in_flight: Item | None = None  # the item the worker handles now

    def reserve(self, pixels: np.ndarray) -> tuple[list[_Slot], int]:
        """A free buffer for ``pixels``: ``slots[k][0]``, marked taken (called under the
        state's lock; the caller puts the item that owns it in ``slots[k]``)."""
        slots = self.slots.setdefault((pixels.shape, pixels.dtype.str), [])
        k = next((i for i, (_, owner) in enumerate(slots) if self._free(owner)), None)
        if k is None:
            slots.append((np.empty_like(pixels), None))
            k = len(slots) - 1
        slots[k] = (slots[k][0], _RESERVED)
        return slots, k

    def _free(self, owner: Item | None) -> bool:
        """Whether a buffer's frame is done with: handed to the runner (``frame`` cleared)
        and no longer in the worker's hands, or skipped (``frame`` cleared too)."""
        return owner is None or (owner.frame is None and owner is not self.in_flight)


def _free_name(out_dir: Path, name: str) -> str:
    """``name``, or ``name_1``, ``name_2``, ... when outputs of that name (or the ``.part`` of
    one, left by a crash) are in ``out_dir``."""
    base = _UNSAFE.sub("_", name)
    candidate, k = base, 0
    while any(  # no glob characters left
        any(out_dir.glob(f"{candidate}*{suffix}"))
        for suffix in (OUTPUT_SUFFIX, OUTPUT_SUFFIX + PART_SUFFIX)
    ):
        k += 1
        candidate = f"{base}_{k}"
    return candidate


def _plain(value: Any) -> Any:
    """A JSON-safe axis value (numpy scalars as Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _add_page(runs: list[dict[str, Any]], page: int, axes: dict[str, Any]) -> None:
    """Add ``page`` with its ``axes`` (time/z) to ``runs``, the compact page_axes of a stack:
    consecutive pages with the same axes, or where one axis steps by 1 and the others stay,
    share a run (``{"pages": [0, 9], "time": 3, "z": [0, 9]}``): one run per z-stack or
    time-lapse, not one entry per frame (hand-written: no library for this)."""
    axes = {k: _plain(v) for k, v in axes.items()}
    last = runs[-1] if runs else None
    if last is not None and last["pages"][1] == page - 1 and last.keys() - {"pages"} == axes.keys():
        moving = [k for k in axes if isinstance(last[k], list)]
        steps = [k for k in axes if _end(last[k]) != axes[k]]
        single = last["pages"][0] == last["pages"][1]
        if not steps and not moving:
            last["pages"][1] = page
            return
        if len(steps) == 1 and (moving == steps or (not moving and single)):
            (k,) = steps
            end = _end(last[k])
            if isinstance(end, int) and not isinstance(end, bool) and axes[k] == end + 1:
                last[k] = [last[k][0] if moving else end, axes[k]]
                last["pages"][1] = page
                return
    runs.append({"pages": [page, page], **axes})


def _end(value: Any) -> Any:
    return value[1] if isinstance(value, list) else value
