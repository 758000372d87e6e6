"""The dock widget: enhance the selected image layer, or follow the frame being looked at.

Everything slow (opening the engine, enhancing frames) runs in worker threads (superqt's
``create_worker``, what napari's ``thread_worker`` wraps, without napari's own error relay, so
that an error becomes one napari notification, ``show_error``); the UI thread only reads the
form and adds or updates layers when a worker reports.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import create_worker

from cyclesr_deploy.builtin import BUILTIN_MODELS, DEFAULT_MODEL
from cyclesr_deploy.engines.select import BACKENDS
from cyclesr_deploy.napari._follow import Follower
from cyclesr_deploy.napari._work import (
    EnhancerPool,
    Settings,
    enhance_into,
    frame_indices,
    new_output,
    result_geometry,
    result_name,
    trust_text,
)

__all__ = ["CycleSRWidget"]

TILINGS = ("auto", "frozen", "naive")


class CycleSRWidget(QWidget):
    """Model (built-in name or folder), backend, tile, overlap, tiling; Enhance (all frames or
    the current one), Cancel, a progress bar; Follow: enhance the frame on screen and new
    frames appended to the layer as they come (live viewing during acquisition)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.enhancers = EnhancerPool()  # workers of a run and of follow mode share it
        self.worker: Any = None
        self.follower = Follower(self)
        self._build()
        self.viewer.layers.selection.events.active.connect(self._on_active)
        self._on_active()

    # --- form -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.layer_label = QLabel()
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItems(BUILTIN_MODELS)
        self.model.setCurrentText(DEFAULT_MODEL)
        self.model.setToolTip("a built-in model name or a model folder")
        browse = QPushButton("Folder...")
        browse.clicked.connect(self._browse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(browse)
        self.backend = QComboBox()
        self.backend.addItems(BACKENDS)
        self.tile = QSpinBox()
        self.tile.setRange(-1, 65536)  # -1: auto (sized to the machine), 0: the whole frame
        self.tile.setSingleStep(64)
        self.tile.setValue(-1)
        self.tile.setSpecialValueText("auto")
        self.overlap = QSpinBox()
        self.overlap.setRange(-1, 65536)
        self.overlap.setValue(-1)
        self.overlap.setSpecialValueText("auto")
        self.tiling = QComboBox()
        self.tiling.addItems(TILINGS)
        self.frames = QComboBox()
        self.frames.addItems(["all frames", "current frame"])
        form = QFormLayout()
        form.addRow("Layer", self.layer_label)
        form.addRow("Model", model_row)
        form.addRow("Backend", self.backend)
        form.addRow("Tile (px)", self.tile)
        form.addRow("Overlap (px)", self.overlap)
        form.addRow("Tiling", self.tiling)
        form.addRow("Frames", self.frames)
        self.run_button = QPushButton("Enhance")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m frames")
        self.follow = QCheckBox("Follow (live)")
        self.follow.setToolTip(
            "enhance the frame on screen as you move through T/Z, and each frame appended to "
            "the layer (live viewing during an acquisition); newest request first"
        )
        self.follow.toggled.connect(self._on_follow)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.follow)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder")
        if folder:
            self.model.setCurrentText(folder)

    def settings(self) -> Settings:
        overlap = self.overlap.value()
        return Settings(
            model=self.model.currentText(),
            backend=self.backend.currentText(),
            tile="auto" if self.tile.value() < 0 else self.tile.value(),
            overlap=None if overlap < 0 else overlap,
            tiling=self.tiling.currentText(),
        )

    def layer(self) -> Image | None:
        """The selected image layer (None when the selection is no single-channel image)."""
        layer = self.viewer.layers.selection.active
        if isinstance(layer, Image) and not layer.rgb and not layer.multiscale:
            return layer
        return None

    def _on_active(self, *_: Any) -> None:
        layer = self.layer()
        self.layer_label.setText(layer.name if layer is not None else "(select an image layer)")
        self.run_button.setEnabled(layer is not None and self.worker is None)

    # --- enhance a layer ------------------------------------------------------------------------
    def current_index(self, layer: Image) -> tuple[int, ...]:
        """The index of the frame of ``layer`` on screen (its leading axes)."""
        lead = layer.data.shape[:-2]
        if not lead:
            return ()
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
        pairs = zip(point, lead, strict=False)  # point: every axis; lead: all but Y, X
        return tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in pairs)

    def run(self) -> Any:
        """Enhance the selected layer (all its frames, or the current one) in a worker; returns
        the worker (started), or None when there is nothing to do."""
        layer = self.layer()
        if layer is None:
            show_error("CycleSR: select a single-channel image layer first")
            return None
        if self.worker is not None:
            return None
        settings, data = self.settings(), layer.data
        every = self.frames.currentIndex() == 0
        indices = frame_indices(data.shape) if every else [self.current_index(layer)]
        self.progress.setRange(0, len(indices))
        self.progress.setValue(0)
        box: dict[str, Any] = {"trusts": []}

        def work() -> Any:
            with self.enhancers.use(settings) as enhancer:
                box["out"] = new_output(data.shape, data.dtype, enhancer.scale)
                box["scale"], box["backend"] = enhancer.scale, enhancer.backend
                yield 0
                yield from enhance_into(enhancer, data, indices, box["out"], box["trusts"])
            return box

        worker = create_worker(work, _ignore_errors=True)  # errors: our notification
        worker.yielded.connect(self.progress.setValue)
        worker.returned.connect(lambda box: self._add_result(layer, settings, box, indices, every))
        worker.errored.connect(lambda exc: show_error(f"CycleSR: {exc}"))
        worker.aborted.connect(lambda: self._say(f"cancelled after {self.progress.value()} frames"))
        worker.finished.connect(self._finished)
        self._set_running(worker)
        worker.start()
        return worker

    def _add_result(
        self, layer: Image, settings: Settings, box: dict, indices: list, every: bool
    ) -> None:
        out, factor = box["out"], box["scale"]
        name = result_name(layer.name, settings.model, factor)
        scale, translate = result_geometry(layer.scale, layer.translate, factor)
        kwargs = {"scale": scale, "translate": translate, "units": layer.units}
        if name in self.viewer.layers and self.viewer.layers[name].data.shape == out.shape:
            target = self.viewer.layers[name]
            if every:
                target.data = out
            else:  # one frame, the one on screen when the run started: update it
                for index in indices:
                    target.data[index] = out[index]
                target.refresh()
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_image(out, name=name, **kwargs)
        trust = trust_text(box["trusts"])
        done = f"{name}: {self.progress.value()} frame(s) on {box['backend']}"
        self._say(f"{done}; {trust}" if trust else done)

    def cancel(self) -> None:
        """Stop the running enhancement after the frame in flight (nothing is added)."""
        if self.worker is not None:
            self.worker.quit()

    def _set_running(self, worker: Any) -> None:
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)

    def _finished(self) -> None:
        self.worker = None
        self.cancel_button.setEnabled(False)
        self._on_active()

    def _say(self, text: str) -> None:
        self.status.setText(text)
        with contextlib.suppress(Exception):  # a notification must never break the widget
            show_info(f"CycleSR: {text}")

    # --- follow ---------------------------------------------------------------------------------
    def _on_follow(self, on: bool) -> None:
        if on:
            layer = self.layer()
            if layer is None:
                show_error("CycleSR: select the image layer to follow first")
                self.follow.setChecked(False)
                return
            self.follower.start(layer, self.settings())
        else:
            self.follower.stop()

    def closeEvent(self, event: Any) -> None:
        self.follower.stop()
        self.cancel()  # the enhancers in use close when their frame is done; the others now:
        threading.Thread(target=self.enhancers.close, daemon=True).start()  # off the UI thread
        super().closeEvent(event)
