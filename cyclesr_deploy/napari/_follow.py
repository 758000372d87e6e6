"""Follow mode: enhance the frame the user looks at, and each frame appended to the layer.

One worker at a time enhances one frame; requests that come while it runs replace each other
(one pending slot: the newest wins, as ``--when-behind latest``), so the viewer never queues
up work it has scrolled past. Enhanced frames are kept (a frame is done once) in a result
layer as large as the followed layer; when the layer grows (frames appended during an
acquisition), the result grows with it and the newest frame is enhanced. The result grows
along the first axis into a buffer whose capacity doubles (the layer shows a view of the
filled part), so appending n frames copies O(n) in all, not O(n^2). When the layer's data are
replaced, a result of the old data still in flight is dropped (``generation``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error
from superqt.utils import create_worker

from cyclesr_deploy.napari._work import (
    Settings,
    as_frame,
    new_output,
    result_geometry,
    result_name,
)

if TYPE_CHECKING:
    from cyclesr_deploy.napari._widget import CycleSRWidget

Index = tuple[int, ...]


class Follower:
    """The follow mode of a :class:`CycleSRWidget` (``start(layer, settings)``, ``stop()``);
    ``done``: the frame indices enhanced so far; ``busy``: a worker is running."""

    def __init__(self, widget: CycleSRWidget) -> None:
        self.widget = widget
        self.layer: Image | None = None
        self.settings: Settings | None = None
        self.result: Image | None = None
        self.done: set[Index] = set()
        self.pending: Index | None = None
        self.worker: Any = None
        self.generation = 0  # bumped when the followed data change: older results are dropped
        self._shape: tuple[int, ...] = ()
        self._buffer: np.ndarray | None = None  # the result's storage, capacity >= its frames

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, layer: Image, settings: Settings) -> None:
        self.stop()
        self.layer, self.settings, self.result, self._buffer = layer, settings, None, None
        self.done, self._shape = set(), tuple(layer.data.shape)
        self.generation += 1
        self.widget.viewer.dims.events.current_step.connect(self._on_step)
        layer.events.data.connect(self._on_data)
        self.request(self.widget.current_index(layer))

    def stop(self) -> None:
        if self.layer is not None:
            self.widget.viewer.dims.events.current_step.disconnect(self._on_step)
            self.layer.events.data.disconnect(self._on_data)
        self.layer, self.pending = None, None

    def _on_step(self, *_: Any) -> None:
        if self.layer is not None:
            self.request(self.widget.current_index(self.layer))

    def _on_data(self, *_: Any) -> None:
        layer = self.layer
        if layer is None:
            return
        shape = tuple(layer.data.shape)
        grew = shape[-2:] == self._shape[-2:] and len(shape) == len(self._shape)
        grew = grew and shape != self._shape
        if not grew:  # replaced by other data: start again
            self.done.clear()
            self.generation += 1
        self._shape = shape
        if len(shape) > 2 and grew:  # the newest frame: the last index of the first axis
            self.request((shape[0] - 1, *(n - 1 for n in shape[1:-2])))
        else:
            self.request(self.widget.current_index(layer))

    def request(self, index: Index) -> None:
        """Enhance frame ``index`` of the followed layer unless done (newest request wins)."""
        if index in self.done:
            return
        self.pending = index
        self._pump()

    def _pump(self) -> None:
        if self.busy or self.pending is None or self.layer is None:
            return
        index, self.pending = self.pending, None
        layer, settings, widget, generation = (
            self.layer,
            self.settings,
            self.widget,
            self.generation,
        )
        frame = layer.data[index]

        def work() -> tuple[int, Index, Any, int]:
            assert settings is not None
            with widget.enhancers.use(settings) as enhancer:
                return generation, index, enhancer(as_frame(frame)), enhancer.scale

        worker = create_worker(work, _ignore_errors=True)  # errors: our notification
        worker.returned.connect(self._store)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._next)
        self.worker = worker
        worker.start()

    def _store(self, result: tuple[int, Index, Any, int]) -> None:
        generation, index, frame, factor = result
        layer = self.layer
        if layer is None or generation != self.generation:  # of data replaced since
            return
        out = self._result_layer(layer, factor, frame.dtype)
        out.data[index] = frame
        out.refresh()
        self.done.add(index)

    def _result_layer(self, layer: Image, factor: int, dtype: Any) -> Image:
        """The live result layer, made or grown to the followed layer's shape."""
        viewer, shape = self.widget.viewer, tuple(layer.data.shape)
        assert self.settings is not None
        name = result_name(layer.name, self.settings.model, factor, follow=True)
        want = new_output(shape, dtype, factor).shape
        if self.result is None or self.result not in viewer.layers:
            scale, translate = result_geometry(layer.scale, layer.translate, factor)
            data = new_output(shape, dtype, factor)
            self.result = viewer.add_image(
                data, name=name, scale=scale, translate=translate, units=layer.units
            )
            self._buffer = data
        elif self.result.data.shape != want:
            self.result.data = self._resized(self.result.data, want, dtype)
        return self.result

    def _resized(self, old: np.ndarray, want: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The result's data for shape ``want``: grown along the first axis, a view of the
        buffer (doubled when full: amortised O(1) copies per frame); else a new array keeping
        the frames that fit (same frame shape)."""
        buf, grown = self._buffer, old.ndim == len(want) > 2 and old.shape[1:] == want[1:]
        if grown and want[0] > old.shape[0] and buf is not None and buf.shape[1:] == want[1:]:
            if buf.shape[0] < want[0]:  # full: double it, copying the filled frames once
                bigger = np.zeros((max(want[0], 2 * buf.shape[0]), *want[1:]), buf.dtype)
                bigger[: old.shape[0]] = old
                self._buffer = buf = bigger
            return buf[: want[0]]
        data = new_output(want, dtype, 1)
        if old.shape[-2:] == want[-2:] and old.ndim == len(want):  # keep the frames that fit
            keep = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, want, strict=True))
            data[keep] = old[keep]
        self._buffer = data
        return data

    def _failed(self, exc: BaseException) -> None:
        show_error(f"CycleSR follow: {exc}")
        self.widget.follow.setChecked(False)

    def _next(self) -> None:
        self.worker = None
        self._pump()
