"""Render docs/napari_widget.png: the CycleSR dock widget in a real napari viewer.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py [--out PNG]

(Debian: ``apt-get install xvfb`` and Qt's xcb libraries, e.g. ``libxcb-icccm4
libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
libxkbcommon-x11-0``).

Needs a display (Xvfb is enough, with Mesa's software OpenGL) and the ``napari`` extra with a Qt
binding. It opens the synthetic LR time-lapse (the plugin's sample data), enhances it with the
built-in model through the widget (tile 0: whole frames), shows input and result side by side
(napari's grid mode) and saves a screenshot of the whole window, palette-quantized to stay small.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from cyclesr_deploy.napari._widget import CycleSRWidget
from cyclesr_deploy.napari._work import sample_timelapse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent / "napari_widget.png"
    ap.add_argument("--out", type=Path, default=default)
    args = ap.parse_args()
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"  # no toast over the canvas
    viewer = napari.Viewer(title="napari + CycleSR", show=True)
    viewer.window.resize(1500, 760)
    ((data, meta, _),) = sample_timelapse()
    layer = viewer.add_image(data, **meta)
    widget = CycleSRWidget(viewer)
    widget.setMaximumWidth(430)
    viewer.window.add_dock_widget(widget, name="Enhance (CycleSR)", area="right")
    viewer.layers.selection.active = layer
    widget.tile.setValue(0)
    widget.run()
    deadline = time.monotonic() + 300
    while widget.worker is not None and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.worker is not None:
        raise SystemExit("the enhancement did not finish in 300 s")
    viewer.canvas.grid.enabled = True
    viewer.dims.set_current_step(0, 3)
    viewer.layers.selection.active = layer
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    _save_small(np.asarray(shot)[..., :3], args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")
    viewer.close()


def _save_small(rgb: np.ndarray, out: Path) -> None:
    """PNG with a 128-colour palette (PIL, a napari dependency through imageio)."""
    from PIL import Image

    img = Image.fromarray(rgb).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    img.save(out, optimize=True)


if __name__ == "__main__":
    main()
