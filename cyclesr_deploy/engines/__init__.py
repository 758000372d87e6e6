"""Inference engines: one module per backend, one entry point.

    from cyclesr_deploy.engines import open_engine, check_batch_shape
    with open_engine("my-model") as engine:          # backend="auto"; tiled runs: tiling=
        print(engine.name, engine.selection)         # what runs, and why
        check_batch_shape(engine.input_spec, batch.shape)   # once per shape
        out = engine.infer(batch)                    # may be reused by the next call

Importing this package imports no backend (torch, onnxruntime, tensorrt, cuda-python): the
engine classes and :func:`open_engine` are loaded on first use, and each engine imports its
backend when created (MissingExtraError naming the extra when it is not installed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cyclesr_deploy.engines.base import (
    Engine,
    FrozenStatsEngine,
    TensorSpec,
    check_batch_shape,
)

if TYPE_CHECKING:
    from cyclesr_deploy.engines.frozen import (
        OnnxFrozenEngine,
        OpenVINOFrozenEngine,
        TorchFrozenEngine,
        open_frozen_engine,
    )
    from cyclesr_deploy.engines.onnxruntime_engine import OnnxRuntimeEngine
    from cyclesr_deploy.engines.openvino_engine import OpenVINOEngine
    from cyclesr_deploy.engines.select import Selection, open_engine
    from cyclesr_deploy.engines.tensorrt_engine import TensorRTEngine
    from cyclesr_deploy.engines.tensorrt_load import find_engine
    from cyclesr_deploy.engines.torch_engine import TorchEngine

_LAZY = {
    "open_engine": "select",
    "find_engine": "tensorrt_load",
    "Selection": "select",
    "OnnxRuntimeEngine": "onnxruntime_engine",
    "OpenVINOEngine": "openvino_engine",
    "OpenVINOFrozenEngine": "frozen",
    "TensorRTEngine": "tensorrt_engine",
    "TorchEngine": "torch_engine",
    "OnnxFrozenEngine": "frozen",
    "TorchFrozenEngine": "frozen",
    "open_frozen_engine": "frozen",
}

__all__ = [
    "Engine",
    "FrozenStatsEngine",
    "OnnxFrozenEngine",
    "OnnxRuntimeEngine",
    "OpenVINOEngine",
    "OpenVINOFrozenEngine",
    "Selection",
    "TensorRTEngine",
    "TensorSpec",
    "TorchEngine",
    "TorchFrozenEngine",
    "check_batch_shape",
    "find_engine",
    "open_engine",
    "open_frozen_engine",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
