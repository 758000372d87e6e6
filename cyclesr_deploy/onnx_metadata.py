"""The cyclesr metadata embedded in an exported ONNX file, read without torch or onnx.

``onnx_from_checkpoint`` stores string key/values in the ONNX ``metadata_props``:

* ``cyclesr.schema_version``: ``"1"``
* ``cyclesr.model_json``: the model folder's ``model.json`` (JSON text)
* ``cyclesr.export``: export settings (JSON object: exporter, opset, direction, tensor names,
  layout, value range, versions, ...)
* ``cyclesr.precision``: ``"fp32"`` or ``"fp16"`` (FP16 ONNX: graph I/O stays float32)
* ``cyclesr.fp16`` (FP16 only): conversion settings (JSON object)

The reader uses ONNX Runtime (the runtime dependency), so an acquisition PC can tell what a file
is without the ``export`` extra.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cyclesr_deploy.errors import InputError, require
from cyclesr_deploy.model import SCHEMA_VERSION, ModelConfig

KEY_SCHEMA = "cyclesr.schema_version"
KEY_MODEL = "cyclesr.model_json"
KEY_EXPORT = "cyclesr.export"
KEY_PRECISION = "cyclesr.precision"
KEY_FP16 = "cyclesr.fp16"

Precision = Literal["fp32", "fp16"]


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported ONNX file says about itself.

    ``model``: the ModelConfig it was exported from; ``export``: export settings (``exporter``,
    ``opset``, ``direction``, ``input_name``, ``output_name``, ``versions``, ...);
    ``precision``: ``"fp32"`` or ``"fp16"``; ``fp16``: FP16 conversion settings (empty for FP32).
    """

    model: ModelConfig
    export: dict[str, Any]
    precision: Precision = "fp32"
    fp16: dict[str, Any] = field(default_factory=dict)

    @property
    def direction(self) -> Literal["ab", "ba"]:
        """``"ab"`` (LR -> HR, the deployed generator G) or ``"ba"`` (HR -> LR, F)."""
        return self.export.get("direction", "ab")

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` key/values (all strings) that encode this metadata."""
        props = {
            KEY_SCHEMA: SCHEMA_VERSION,
            KEY_MODEL: json.dumps(self.model.to_json_dict(), sort_keys=False),
            KEY_EXPORT: json.dumps(self.export, sort_keys=True),
            KEY_PRECISION: self.precision,
        }
        if self.fp16:
            props[KEY_FP16] = json.dumps(self.fp16, sort_keys=True)
        return props


def _json_object(props: Mapping[str, str], key: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(props[key])
    except ValueError as exc:
        raise InputError(f"{source}: metadata {key} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise InputError(f"{source}: metadata {key} is not a JSON object")
    return value


def parse_metadata(props: Mapping[str, str], source: str = "onnx") -> OnnxMetadata:
    """Decode ``metadata_props`` (a str -> str mapping); InputError if they are not cyclesr's.

    ``source`` names the file in error messages.
    """
    if KEY_MODEL not in props or KEY_EXPORT not in props:
        raise InputError(
            f"{source}: no cyclesr metadata ({KEY_MODEL}, {KEY_EXPORT}); was it exported by "
            "cyclesr_deploy (cyclesr export)?"
        )
    schema = props.get(KEY_SCHEMA)
    if schema != SCHEMA_VERSION:
        raise InputError(
            f"{source}: metadata schema_version {schema!r} is not supported "
            f"(this version reads {SCHEMA_VERSION!r}); re-export the model"
        )
    data = _json_object(props, KEY_MODEL, source)
    data.pop("derived", None)
    try:
        model = ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{source}: embedded model.json is not valid:\n{exc}") from exc
    precision = props.get(KEY_PRECISION, "fp32")
    if precision not in ("fp32", "fp16"):
        raise InputError(f"{source}: unknown precision {precision!r} in {KEY_PRECISION}")
    fp16 = _json_object(props, KEY_FP16, source) if KEY_FP16 in props else {}
    return OnnxMetadata(
        model=model,
        export=_json_object(props, KEY_EXPORT, source),
        precision=precision,
        fp16=fp16,
    )


def read_onnx_metadata(path: str | Path) -> OnnxMetadata:
    """Read the cyclesr metadata of an exported ONNX file with ONNX Runtime (no torch, no onnx).

    Opens a CPU session with graph optimizations off (the model is parsed, not run).
    InputError for a missing file, a file ONNX Runtime cannot load, or missing metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"onnx: {path} does not exist")
    ort = require("onnxruntime", "cpu", "Reading ONNX metadata")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
        raise InputError(f"onnx: ONNX Runtime cannot load {path} ({exc})") from exc
    props = dict(session.get_modelmeta().custom_metadata_map)
    return parse_metadata(props, source=str(path))
