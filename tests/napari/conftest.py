"""napari widget tests run headless: offscreen Qt (no display, no rendered canvas needed)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
