"""``export.json``: what the export steps put into a model folder (torch-free, onnx-free).

One entry per artifact, keyed by its file name (``generator.onnx``, ``generator.fp16.onnx``,
engines ...), each with size, sha256, precision, parity figures and the seconds the step took;
plus the versions of the tools involved. ONNX and TensorRT steps each merge their entries with
:func:`write_export_report`; an entry for the same name replaces the old one.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cyclesr_deploy.engines.precision import PrecisionRecord
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.integrity import file_digest
from cyclesr_deploy.model import EXPORT_JSON, SCHEMA_VERSION, WEIGHTS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class ParityCase(_Model):
    """One comparison of a candidate output with a reference output on the same input.

    Errors are in the generator's output units ([-1, 1], so data range 2); ``psnr_db`` is
    ``10 log10(2**2 / MSE)`` (``inf`` for identical outputs, written ``"Infinity"`` in JSON).
    """

    name: str = Field(description='e.g. "random 2x1x256x192", "synthetic 1x1x128x128 seed 3"')
    kind: Literal["random", "synthetic"]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    rel_l2: float = Field(description="||candidate - reference||_2 / ||reference||_2")
    psnr_db: float


class ArtifactEntry(_Model):
    """One file written by an export step."""

    name: str = Field(description="file name; the key in export.json")
    path: str = Field(description="path relative to the model folder (POSIX separators)")
    kind: str = Field(description='"onnx" or "tensorrt"')
    precision: str = Field(description='"fp32", "fp16", ...')
    direction: Literal["ab", "ba"] = "ab"
    bytes: int = Field(ge=0)
    sha256: str
    seconds: float = Field(ge=0, description="wall time of the step that made it, s")
    created: str = Field(description="UTC time, ISO 8601")
    reference: str = Field(default="", description='what parity compares to: "torch", a file')
    tolerance: dict[str, float] = Field(default_factory=dict, description="limits that passed")
    parity: list[ParityCase] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict, description="step settings")

    @property
    def max_abs(self) -> float:
        """Largest max-abs error over the parity cases (0 without cases)."""
        return max((c.max_abs for c in self.parity), default=0.0)

    @property
    def rel_l2(self) -> float:
        """Largest relative L2 error over the parity cases (0 without cases)."""
        return max((c.rel_l2 for c in self.parity), default=0.0)


class ExportReport(_Model):
    """Content of ``export.json``: artifacts by file name, tool versions, and the reduced CPU
    precisions measured against FP32 (``cyclesr export precision``; keyed
    ``backend/precision``, read at run time by :mod:`cyclesr_deploy.engines.precision`)."""

    schema_version: Literal["1"] = SCHEMA_VERSION
    artifacts: dict[str, ArtifactEntry] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    precisions: dict[str, PrecisionRecord] = Field(default_factory=dict)

    @classmethod
    def of(cls, *artifacts: ArtifactEntry, versions: dict[str, str] | None = None) -> ExportReport:
        """A report holding ``artifacts`` (keyed by their names)."""
        return cls(artifacts={a.name: a for a in artifacts}, versions=dict(versions or {}))

    def merged(self, other: ExportReport) -> ExportReport:
        """This report updated by ``other`` (its artifacts and versions win)."""
        return ExportReport(
            artifacts={**self.artifacts, **other.artifacts},
            versions={**self.versions, **other.versions},
            precisions={**self.precisions, **other.precisions},
        )


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def artifact_entry(
    model_dir: str | Path,
    path: str | Path,
    *,
    kind: str,
    precision: str,
    seconds: float,
    direction: Literal["ab", "ba"] = "ab",
    reference: str = "",
    tolerance: dict[str, float] | None = None,
    parity: list[ParityCase] | tuple[ParityCase, ...] = (),
    settings: dict[str, Any] | None = None,
) -> ArtifactEntry:
    """Describe the file ``path`` (inside ``model_dir`` or not) as an export.json entry."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(Path(model_dir).resolve()).as_posix()
    except ValueError:
        rel = str(path.resolve())
    size, sha = file_digest(path)
    return ArtifactEntry(
        name=path.name,
        path=rel,
        kind=kind,
        precision=precision,
        direction=direction,
        bytes=size,
        sha256=sha,
        seconds=round(float(seconds), 3),
        created=utc_now(),
        reference=reference,
        tolerance=dict(tolerance or {}),
        parity=list(parity),
        settings=dict(settings or {}),
    )


def weights_entry(model_dir: str | Path, direction: Literal["ab", "ba"] = "ab") -> ArtifactEntry:
    """The export.json entry of the generator weights the ONNX was exported from (recorded so
    that the torch backend's weights are checked like the graphs)."""
    return artifact_entry(
        model_dir,
        Path(model_dir) / WEIGHTS[direction],
        kind="weights",
        precision="fp32",
        seconds=0.0,
        direction=direction,
    )


def read_export_report(model_dir: str | Path) -> ExportReport:
    """``export.json`` of ``model_dir``; an empty report when there is none yet."""
    path = Path(model_dir) / EXPORT_JSON
    if not path.is_file():
        return ExportReport()
    try:
        return ExportReport.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise InputError(f"export report: {path} is not a valid export.json ({exc})") from exc


def write_export_report(model_dir: str | Path, report: ExportReport) -> ExportReport:
    """Merge ``report`` into ``model_dir/export.json`` (written atomically); return the result.

    Entries with the same artifact name are replaced; others are kept. Not locked: run export
    steps on one folder one after the other.
    """
    from cyclesr_deploy.io import atomic_path

    merged = read_export_report(model_dir).merged(report)
    text = merged.model_dump_json(indent=2) + "\n"  # inf -> "Infinity": strict JSON
    with atomic_path(Path(model_dir) / EXPORT_JSON) as part:
        part.write_text(text, encoding="utf-8")
    return merged


def finite_or_inf(value: float) -> float:
    """``value`` as a float; NaN becomes inf (an error figure that never passes a tolerance)."""
    value = float(value)
    return math.inf if math.isnan(value) else value
