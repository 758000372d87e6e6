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
time/z vary), its pages in arrival order (pycro-manager's order: time, then z), axes ``TYX``
(``ZYX`` when the frames have ``z`` and no ``time``), pixel size ``PixelSizeUm`` / scale.
Each is written to ``name.part`` and renamed when the hook closes, so it is never observed half
written; ``cyclesr-manifest.json`` (the format of ``cyclesr watch``, keyed by output; written
at close, the live figures are :meth:`AcquisitionHook.status`) records per stack the pages
written, skipped and failed and ``axes``: the ``Axes`` of every page in arrival order. A name
already in the folder is never overwritten: the run takes ``name_1``,
``name_2``, ...

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
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ModelConfig
from cyclesr_deploy.runtime.enhancer import open_model
from cyclesr_deploy.runtime.manifest import OutputLock
from cyclesr_deploy.runtime.runner import EnhanceConfig
from cyclesr_deploy.runtime.tiff import StackInfo
from cyclesr_deploy.runtime.watch import WatchConfig, WatchStatus, WatchWorker
from cyclesr_deploy.runtime.watch_scan import Item, Source

__all__ = ["HOOK_COMMAND", "AcquisitionHook", "HookConfig"]

log = logging.getLogger(__name__)

HOOK_COMMAND = "cyclesr acquisition hook"  # how the hook names itself to a run refused its folder
RULE_HOOK = "hook"  # manifest "complete_by": handed over by the acquisition
STACKED_AXES = ("time", "z")  # pycro-manager axes stacked into one file; the others split files
OUTPUT_SUFFIX = ".ome.tif"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = Item(None, -1, 0.0, frame=True)  # type: ignore[arg-type]  # a buffer being filled
_Slot = tuple[np.ndarray, Item | None]


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
        precision: str = "auto",
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
        self._lock = OutputLock(self.out_dir, command=HOOK_COMMAND)
        self._lock.acquire()  # InputError when another run writes there
        self.name = _free_name(self.out_dir, self.cfg.name)
        self._closing = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._sources: dict[tuple[tuple[str, str], ...], Source] = {}
        self._axes: dict[int, list[dict[str, Any]]] = {}  # per source seq: Axes of each page
        self._warned_full = False
        self._buffers = _BufferPool()
        self.worker: WatchWorker | None = None
        self.report: WatchStatus | None = None
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
            self._lock.release()
            raise self._error

    # --- the acquisition thread ---------------------------------------------------------------
    def __call__(self, image: np.ndarray, metadata: dict[str, Any]) -> Any:
        """pycro-manager's image processor: queue a copy of ``image`` and return at once."""
        arrival = time.perf_counter()
        if self._closing.is_set() or self.worker is None:
            raise RuntimeError("the acquisition hook is closed")
        pixels = np.asarray(image)
        axes = dict((metadata or {}).get("Axes") or {})
        state = self.worker.state
        with state.lock:
            src = self._source(axes, metadata or {}, pixels)
            slots, k = self._buffers.reserve(pixels)
        buffer = slots[k][0]
        np.copyto(buffer, pixels)  # the acquisition may reuse its buffer: ours from now on
        with state.lock:
            self._axes[src.seq].append(axes)
            item = Item(src, src.queued_to, arrival, arrival, RULE_HOOK, buffer)
            slots[k] = (buffer, item)
            src.queued_to += 1
            state.seen += 1
            self._admit(item)
        return (image, metadata) if self.cfg.return_image else None

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

    def _warn_full(self, what: str) -> None:
        if not self._warned_full:
            self._warned_full = True
            log.warning(
                "the engine is behind: %d frames queued (queue_size); %s",
                self.cfg.queue_size,
                what,
            )

    def _source(self, axes: dict[str, Any], metadata: dict[str, Any], frame: np.ndarray) -> Source:
        """The output stack of a frame with ``axes`` (made at its first frame)."""
        key = tuple(sorted((str(k), str(v)) for k, v in axes.items() if k not in STACKED_AXES))
        src = self._sources.get(key)
        if src is None:
            if frame.ndim != 2:
                raise InputError(f"expected a 2-D frame (H, W), got shape {frame.shape}")
            stem = "_".join([self.name, *(f"{k}-{v}" for k, v in key)])
            out = self.out_dir / (_UNSAFE.sub("_", stem) + OUTPUT_SUFFIX)
            letter = "Z" if "z" in axes and "time" not in axes else "T"
            pixel = metadata.get("PixelSizeUm")
            info = StackInfo(
                path=None,
                axes=letter + "YX",
                shape=(1, *frame.shape),
                dtype=frame.dtype,
                kind="ome",
                pixel_size_um=float(pixel) if pixel else None,
            )
            src = Source(out, out, len(self._sources), frame_file=False, info=info)
            self._sources[key] = self.worker.state.sources[out.name] = src  # type: ignore[union-attr]
            self._axes[src.seq] = []
        return src

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
                    with worker.state.lock:
                        for src in self._sources.values():
                            worker.state.manifest.update(src.path, axes=self._axes[src.seq])
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
                continue
            self._buffers.in_flight = item  # its buffer stays taken until handled
            try:
                worker.handle(item, taken)
            finally:
                self._buffers.in_flight = None
            # (no manifest save here: it writes a file under the lock the hook takes; the
            # manifest is written when the hook closes, the live figures are status())

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
        return [f"{s.out.name}: {s.failed}" for s in self._sources.values() if s.failed]

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
    """``name``, or ``name_1``, ``name_2``, ... when outputs of that name are in ``out_dir``."""
    base = _UNSAFE.sub("_", name)
    candidate, k = base, 0
    while any(out_dir.glob(f"{candidate}*{OUTPUT_SUFFIX}")):  # no glob characters left
        k += 1
        candidate = f"{base}_{k}"
    return candidate
