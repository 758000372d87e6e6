"""Export of a trained model folder: FP32 ONNX, FP16 ONNX, export.json (``export`` extra).

Importing this package is cheap: torch and onnx are imported when a function is first used
(module-level ``__getattr__``), and their absence raises MissingExtraError naming the extra.

    from cyclesr_deploy.export import onnx_from_checkpoint, fp16_onnx_from_onnx
    fp32 = onnx_from_checkpoint("my-model")            # my-model/generator.onnx
    fp16 = fp16_onnx_from_onnx(fp32.path)               # my-model/generator.fp16.onnx
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cyclesr_deploy.errors import require

if TYPE_CHECKING:
    from cyclesr_deploy.engines.tensorrt_load import load_engine
    from cyclesr_deploy.engines.trt_config import TensorRTBuildConfig
    from cyclesr_deploy.export.bioimageio import BioimageioExport, export_bioimageio
    from cyclesr_deploy.export.fp16 import Fp16Export, fp16_onnx_from_onnx
    from cyclesr_deploy.export.onnx_export import OnnxExport, onnx_from_checkpoint
    from cyclesr_deploy.export.parity import (
        ExportError,
        ParityError,
        compare_outputs,
        random_inputs,
        run_parity,
        synthetic_inputs,
    )
    from cyclesr_deploy.export.report import (
        ArtifactEntry,
        ExportReport,
        ParityCase,
        read_export_report,
        write_export_report,
    )
    from cyclesr_deploy.export.tensorrt_build import EngineBuild, engine_from_onnx

# public name -> (submodule or full module name, packages it needs beyond the core); tensorrt
# itself is imported by tensorrt_build when a build starts (MissingExtraError naming the
# ``tensorrt`` extra)
_LAZY: dict[str, tuple[str, tuple[str, ...]]] = {
    "engine_from_onnx": ("tensorrt_build", ()),
    "load_engine": ("cyclesr_deploy.engines.tensorrt_load", ()),
    "EngineBuild": ("tensorrt_build", ()),
    "TensorRTBuildConfig": ("cyclesr_deploy.engines.trt_config", ()),
    "onnx_from_checkpoint": ("onnx_export", ("torch", "onnx")),
    "OnnxExport": ("onnx_export", ("torch", "onnx")),
    "fp16_onnx_from_onnx": ("fp16", ("onnx", "onnxconverter_common")),
    "Fp16Export": ("fp16", ("onnx", "onnxconverter_common")),
    "ExportError": ("parity", ()),
    "export_bioimageio": ("bioimageio", ()),  # requires the ``bioimageio`` extra itself
    "BioimageioExport": ("bioimageio", ()),
    "ParityError": ("parity", ()),
    "compare_outputs": ("parity", ()),
    "random_inputs": ("parity", ()),
    "run_parity": ("parity", ()),
    "synthetic_inputs": ("parity", ()),
    "ArtifactEntry": ("report", ()),
    "ExportReport": ("report", ()),
    "ParityCase": ("report", ()),
    "read_export_report": ("report", ()),
    "write_export_report": ("report", ()),
}

__all__ = [
    "ArtifactEntry",
    "BioimageioExport",
    "EngineBuild",
    "ExportError",
    "ExportReport",
    "Fp16Export",
    "OnnxExport",
    "ParityCase",
    "ParityError",
    "TensorRTBuildConfig",
    "compare_outputs",
    "engine_from_onnx",
    "export_bioimageio",
    "fp16_onnx_from_onnx",
    "load_engine",
    "onnx_from_checkpoint",
    "random_inputs",
    "read_export_report",
    "run_parity",
    "synthetic_inputs",
    "write_export_report",
]


def __getattr__(name: str) -> Any:
    try:
        module, needs = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    for package in needs:
        require(package, "export", f"cyclesr_deploy.export.{name}")
    full = module if "." in module else f"{__name__}.{module}"
    value = getattr(importlib.import_module(full), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
