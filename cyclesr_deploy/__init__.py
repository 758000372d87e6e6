"""cyclesr-deploy: unpaired CycleGAN super-resolution for confocal microscopy.

Importing this package pulls in numpy only; torch, onnx and tensorrt are imported lazily by the
subpackages that need them, and their absence raises :class:`MissingExtraError` naming the extra.
"""

from __future__ import annotations

from cyclesr_deploy.errors import InputError, MissingExtraError

__version__ = "0.1.0.dev0"

__all__ = ["InputError", "MissingExtraError", "__version__"]
