"""cyclesr-deploy: unpaired CycleGAN super-resolution for confocal microscopy.

Importing this package pulls in numpy only; torch, onnx and tensorrt are imported lazily by the
subpackages that need them, and their absence raises :class:`MissingExtraError` naming the extra.
"""

from __future__ import annotations

from typing import Any

from cyclesr_deploy.errors import InputError, MissingExtraError

__version__ = "0.1.0.dev0"

__all__ = [
    "AcquisitionHook",
    "EnhanceConfig",
    "Enhancer",
    "FrameRunner",
    "InputError",
    "MissingExtraError",
    "__version__",
    "enhance_files",
    "open_engine",
]

# The Python API, imported on first use (``from cyclesr_deploy import Enhancer``).
_LAZY = {
    "AcquisitionHook": "cyclesr_deploy.runtime.acquisition",
    "Enhancer": "cyclesr_deploy.runtime.enhancer",
    "EnhanceConfig": "cyclesr_deploy.runtime.runner",
    "FrameRunner": "cyclesr_deploy.runtime.runner",
    "enhance_files": "cyclesr_deploy.runtime.pipeline",
    "open_engine": "cyclesr_deploy.engines",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cyclesr_deploy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
