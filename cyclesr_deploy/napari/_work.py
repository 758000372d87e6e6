"""The napari plugin's work, without napari or Qt: settings, frames of a layer's data, the
enhanced layer's geometry and name, and the sample data. The widget (:mod:`._widget`) runs
:func:`enhance_into` in a worker thread; every frame goes through
:class:`~cyclesr_deploy.runtime.enhancer.Enhancer`, i.e. the frame runner of ``cyclesr enhance``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cyclesr_deploy.builtin import DEFAULT_MODEL
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.runtime.enhancer import Enhancer
from cyclesr_deploy.runtime.runner import DTYPES, WHOLE_MAX_PX

__all__ = [
    "EnhancerPool",
    "Settings",
    "as_frame",
    "enhance_into",
    "frame_indices",
    "new_output",
    "result_geometry",
    "result_name",
    "sample_frame",
    "sample_timelapse",
]

Index = tuple[int, ...]


@dataclass(frozen=True)
class Settings:
    """What the widget's form says: ``model`` (folder or built-in name), ``backend`` and the
    tiling options of ``cyclesr enhance`` (``overlap`` None: from the receptive field)."""

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    tile: int | Literal["auto"] = "auto"  # as cyclesr enhance: sized to the machine; 0: whole
    overlap: int | None = None
    tiling: str = "auto"
    whole_max_px: int = WHOLE_MAX_PX  # not in the form: the default of cyclesr enhance

    def open(self) -> Enhancer:
        """The Enhancer for these settings (loads the engine: call it off the UI thread)."""
        return Enhancer(
            self.model.strip() or None,
            self.backend,
            tile=self.tile,  # type: ignore[arg-type]
            overlap=self.overlap,
            tiling=self.tiling,  # type: ignore[arg-type]
            whole_max_px=self.whole_max_px,
        )


class EnhancerPool:
    """The Enhancers of the widget's workers, one per :class:`Settings` (a run and follow mode
    may use different settings at the same time): ``with pool.use(settings) as enhancer``.
    An Enhancer is closed once its last user is done with it, unless its settings are the
    latest asked for (kept for the next frame or run); :meth:`close` closes the idle ones now
    and the others when their users are done. Reference counting of a few objects under one
    lock: no library needed (hand-written, ~30 lines)."""

    def __init__(self, opener: Callable[[Settings], Enhancer] | None = None) -> None:
        self._open = opener or (lambda settings: settings.open())
        self._lock = threading.Lock()
        self._entries: dict[Settings, list[Any]] = {}  # settings -> [Enhancer, users]
        self._latest: Settings | None = None
        self._closed = False

    @contextlib.contextmanager
    def use(self, settings: Settings) -> Iterator[Enhancer]:
        """The Enhancer for ``settings`` (opened here when needed: call it off the UI
        thread), never closed while the block runs."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the widget is closed")
            entry = self._entries.get(settings)
            if entry is None:  # loads the engine; other workers wait for the lock
                entry = self._entries[settings] = [self._open(settings), 0]
            entry[1] += 1
            self._latest = settings
            idle = self._idle()
        self._close(idle)
        try:
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1
                idle = self._idle()
            self._close(idle)

    def close(self) -> None:
        """Close the idle Enhancers; the others close when their last user is done."""
        with self._lock:
            self._closed = True
            idle = self._idle()
        self._close(idle)

    def _idle(self) -> list[Enhancer]:
        """Take out the Enhancers nobody uses, but the latest settings' (under the lock)."""
        drop = [
            s
            for s, (_, users) in self._entries.items()
            if not users and (self._closed or s != self._latest)
        ]
        return [self._entries.pop(s)[0] for s in drop]

    @staticmethod
    def _close(enhancers: list[Enhancer]) -> None:
        for enhancer in enhancers:
            enhancer.close()


def frame_indices(shape: Sequence[int]) -> list[Index]:
    """The index of every 2-D frame of data of ``shape`` (..., Y, X), in C order."""
    if len(shape) < 2:
        raise InputError(f"a layer of shape {tuple(shape)} has no 2-D frames")
    return list(np.ndindex(*shape[:-2]))


def as_frame(data: Any) -> np.ndarray:
    """One frame of a layer (numpy, dask, zarr) as a 2-D array the runner takes: float64 data
    become float32; other dtypes than uint8, uint16, float32 are refused with a clear error."""
    frame = np.asarray(data)
    if frame.ndim != 2:
        raise InputError(f"expected a 2-D frame, got shape {frame.shape}")
    if frame.dtype.kind == "f" and frame.dtype != np.float32:
        frame = frame.astype(np.float32)
    if frame.dtype not in DTYPES:
        raise InputError(
            f"layer dtype {frame.dtype} is not supported: convert it to uint8, uint16 or float32"
        )
    return frame


def new_output(shape: Sequence[int], dtype: Any, scale: int) -> np.ndarray:
    """The (zeroed) enhanced array for data of ``shape``: Y and X times ``scale``."""
    dtype = np.float32 if np.dtype(dtype).kind == "f" else np.dtype(dtype)
    return np.zeros((*shape[:-2], shape[-2] * scale, shape[-1] * scale), dtype)


def enhance_into(
    enhancer: Enhancer,
    data: Any,
    indices: Sequence[Index],
    out: np.ndarray,
    trusts: list[tuple[Index, Any]] | None = None,
) -> Iterator[int]:
    """Enhance the frames ``indices`` of ``data`` (..., Y, X) into ``out``, one at a time;
    yields the number done after each (a worker stops between frames when cancelled);
    ``trusts`` (when given) gets (index, the frame's FrameTrust or None) for each."""
    for done, index in enumerate(indices, 1):
        out[index], trust = enhancer.run(as_frame(data[index]))  # both under its lock
        if trusts is not None:
            trusts.append((index, trust))
        yield done


def trust_text(trusts: Sequence[tuple[Index, Any]]) -> str:
    """One line on the frames' trust for the widget's status: ``trust: 1 of 5 frame(s)
    untrusted (lowest 0.0002 at (3,), spectrum)``, ``trust: ok (lowest 0.41)``, or ``""``
    (the model has no trust calibration)."""
    scored = [(i, t) for i, t in trusts if t is not None]
    if not scored:
        return ""
    index, low = min(scored, key=lambda it: it[1].score)
    bad = sum(not t.trusted for _i, t in scored)
    if not bad:
        return f"trust: ok (lowest {low.score:.3g})"
    return (
        f"trust: {bad} of {len(scored)} frame(s) untrusted (lowest {low.score:.3g} at "
        f"{tuple(index)}, {low.worst}): the model may invent structure there"
    )


def result_geometry(
    scale: Sequence[float], translate: Sequence[float], factor: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """World scale and translate of the enhanced layer of a layer with ``scale`` and
    ``translate``: Y and X pixels ``factor`` times smaller, shifted so that the enhanced pixels
    cover the input pixels exactly (the centre of output pixel 0 is at input -0.5 + 0.5/f)."""
    scale, translate = tuple(map(float, scale)), tuple(map(float, translate))
    out_scale = (*scale[:-2], *(s / factor for s in scale[-2:]))
    shift = 0.5 / factor - 0.5
    yx = zip(translate[-2:], scale[-2:], strict=True)
    out_translate = (*translate[:-2], *(t + shift * s for t, s in yx))
    return out_scale, out_translate


def result_name(layer: str, model: str, factor: int, follow: bool = False) -> str:
    """``cells [CycleSR reference-cyclegan x1]`` (``live`` for follow mode)."""
    label = model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or DEFAULT_MODEL
    return f"{layer} [CycleSR {label} x{factor}{' live' if follow else ''}]"


def _simulate(size: int, n_frames: int) -> tuple[np.ndarray, float]:
    from cyclesr_deploy.synthetic import SynthConfig
    from cyclesr_deploy.synthetic.timeseries import simulate_time_series

    cfg = SynthConfig(size=size, seed=0)
    series = simulate_time_series(cfg, n_frames)
    return series.lr, cfg.hr_pixel_nm / 1e3


def sample_frame() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: one 512 x 512 low-resolution confocal frame (uint16, synthetic)."""
    lr, px = _simulate(512, 1)
    meta = {"name": "synthetic LR frame", "scale": (px, px), "units": "um"}
    return [(lr[0], meta, "image")]


def sample_timelapse() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: a 6-frame 256 x 256 LR time-lapse (drifting, bleaching; uint16)."""
    lr, px = _simulate(256, 6)
    meta = {"name": "synthetic LR time-lapse", "scale": (1.0, px, px), "units": ("s", "um", "um")}
    return [(lr, meta, "image")]
