"""Reduced precision on the CPU, gated by quality: the records and the runtime choice.

``cyclesr export precision MODEL_DIR`` (:mod:`cyclesr_deploy.export.precision_check`) measures
each reduced precision of the OpenVINO engine against FP32 on the project's synthetic test set
and records it in ``export.json`` under ``precisions`` (one :class:`PrecisionRecord` per
``backend/precision`` key): its speed next to FP32, its PSNR against the FP32 output, and the
change of PSNR and SSIM against the ground truth. ``precision="auto"``
(:func:`choose_precision`) takes the fastest recorded precision that

* this CPU can run (``bf16``: ``avx512_bf16`` or AMX, reported by OpenVINO as ``BF16``;
  ``int8``: ``generator.int8.onnx`` present and unchanged),
* loses at most :data:`MAX_PSNR_LOSS_DB` dB of PSNR and :data:`MAX_SSIM_LOSS` of SSIM against
  the ground truth, and stays within :data:`MIN_PSNR_VS_FP32_DB` of the FP32 output,

else FP32; the reason and every rejected precision are reported (never silently). Torch-free,
onnx-free: the runtime reads ``export.json`` as JSON.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ONNX_FILES, ONNX_INT8, ModelFolder

log = logging.getLogger("cyclesr_deploy.engines")

#: the documented gate: the largest quality loss against the ground truth a reduced precision
#: may show on the synthetic test set (PSNR in dB, SSIM absolute), and the lowest PSNR of its
#: output against FP32's (output range [-1, 1], data range 2). The last one matters: the
#: generator's output is only ~21 dB from the HR ground truth (a noisy acquisition), so the
#: first two cannot see a change of 45 dB against FP32, which is what NNCF int8 does to the
#: built-in model (mean 142, max 4672 uint16 levels of 38296 at 1024^2); bf16 gives 61.7 dB
#: (mean 21 levels). 50 dB was set after that measurement (first 40 dB, which passed int8).
MAX_PSNR_LOSS_DB = 0.1
MAX_SSIM_LOSS = 0.001
MIN_PSNR_VS_FP32_DB = 50.0
#: the CPU precisions of the OpenVINO engine and the ONNX graph each runs
OPENVINO_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
REDUCED: tuple[str, ...] = ("int8", "bf16")
ONNX_BY_CPU_PRECISION = {"fp32": ONNX_FILES["ab"], "bf16": ONNX_FILES["ab"], "int8": ONNX_INT8}
RECORDS_KEY = "precisions"  # export.json's section


class PrecisionRecord(BaseModel):
    """One reduced precision measured against FP32 by the export (``export.json`` ->
    ``precisions`` -> ``"openvino/bf16"``). Times are medians on the export machine."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")

    backend: str = "openvino"
    precision: str
    artifact: str = Field(description="the ONNX file this precision runs")
    source_sha256: str = Field(
        default="", description=f"sha256 of {ONNX_FILES['ab']} when measured (stale if changed)"
    )
    device: str = "CPU"
    cpu: str = ""
    frame_size: int = Field(ge=1, description="side of the checked frames, px")
    time_frame_size: int | None = Field(
        default=None, ge=1, description="side of the timed frame, px (None: recorded before)"
    )
    frames: int = Field(ge=1, description="synthetic test frames")
    ms: float = Field(ge=0, description="median ms per frame at this precision")
    fp32_ms: float = Field(ge=0, description="median ms per frame at FP32, same run")
    psnr_vs_fp32_db: float = Field(description="output vs the FP32 output, range [-1, 1]")
    max_abs_vs_fp32: float
    psnr_gt_fp32_db: float = Field(description="FP32 output vs ground truth (mean)")
    psnr_gt_db: float
    ssim_gt_fp32: float
    ssim_gt: float
    created: str = ""

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.ms if self.ms > 0 else 0.0

    @property
    def psnr_loss_db(self) -> float:
        return self.psnr_gt_fp32_db - self.psnr_gt_db

    @property
    def ssim_loss(self) -> float:
        return self.ssim_gt_fp32 - self.ssim_gt

    def failures(self) -> list[str]:
        """Why this record fails the gate (empty: it passes)."""
        why = []  # `not (x <= limit)`: a NaN fails (any comparison with NaN is False)
        if not self.psnr_loss_db <= MAX_PSNR_LOSS_DB:
            why.append(f"PSNR vs ground truth -{self.psnr_loss_db:.3f} dB > {MAX_PSNR_LOSS_DB}")
        if not self.ssim_loss <= MAX_SSIM_LOSS:
            why.append(f"SSIM vs ground truth -{self.ssim_loss:.4f} > {MAX_SSIM_LOSS}")
        if not self.psnr_vs_fp32_db >= MIN_PSNR_VS_FP32_DB:
            why.append(f"{self.psnr_vs_fp32_db:.1f} dB vs FP32 < {MIN_PSNR_VS_FP32_DB}")
        return why

    def describe(self) -> str:
        return (
            f"{self.precision}: {self.speedup:.2f}x FP32, {self.psnr_vs_fp32_db:.1f} dB vs FP32, "
            f"PSNR/SSIM vs ground truth {-self.psnr_loss_db:+.3f} dB / {-self.ssim_loss:+.4f}"
        )


def record_key(backend: str, precision: str) -> str:
    return f"{backend}/{precision}"


def read_records(model_dir: str | Path) -> dict[str, PrecisionRecord]:
    """The ``precisions`` records of ``export.json`` (empty without any). InputError for a
    record that does not parse (a hand-edited file)."""
    path = ModelFolder(model_dir).export_json
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8")).get(RECORDS_KEY) or {}
        return {k: PrecisionRecord.model_validate(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError, ValidationError) as exc:
        raise InputError(f"{path}: unreadable precision records ({exc})") from exc


def _source_digest(folder: ModelFolder) -> str:
    path = folder.onnx("fp32")
    return folder.digest(path.name) if path.is_file() else ""


def cpu_cannot_run(precision: str, capabilities: tuple[str, ...]) -> str | None:
    """Why this CPU cannot run ``precision`` (OpenVINO's ``OPTIMIZATION_CAPABILITIES``), or
    None."""
    if precision == "bf16" and "BF16" not in capabilities:
        return "this CPU has no avx512_bf16/AMX (OpenVINO reports no BF16): bf16 would be emulated"
    if precision == "int8" and "INT8" not in capabilities:
        return "OpenVINO reports no INT8 support on this CPU"
    return None


def stale_int8(model_dir: str | Path, backend: str = "openvino") -> str | None:
    """Why the int8 graph must not run (an explicit ``precision="int8"``): no record of it, or a
    record quantized from another ``generator.onnx`` (re-exported since); None when current."""
    folder = ModelFolder(model_dir)
    rec = read_records(model_dir).get(record_key(backend, "int8"))
    rerun = f"re-run: cyclesr export precision {folder.path}"
    if rec is None:
        return f"{ONNX_BY_CPU_PRECISION['int8']} has no precision record ({rerun})"
    if rec.source_sha256 != _source_digest(folder):
        return (
            f"{ONNX_BY_CPU_PRECISION['int8']} was quantized from another {ONNX_FILES['ab']} "
            f"(re-exported since; {rerun})"
        )
    return None


@dataclass
class PrecisionChoice:
    """``precision`` chosen, ``reason`` (one line), ``rejected`` (precision, why not)."""

    precision: str
    reason: str
    rejected: list[tuple[str, str]] = field(default_factory=list)


def choose_precision(
    model_dir: str | Path, capabilities: tuple[str, ...], backend: str = "openvino"
) -> PrecisionChoice:
    """``precision="auto"`` on the CPU: the fastest recorded precision that this CPU runs and
    whose record passes the gate, else fp32 (see the module docstring)."""
    folder = ModelFolder(model_dir)
    records = read_records(model_dir)
    rejected: list[tuple[str, str]] = []
    mine = [
        r
        for k, r in records.items()
        if k == record_key(backend, r.precision) and r.precision in REDUCED
    ]
    for precision in REDUCED:
        if not any(r.precision == precision for r in mine):
            rejected.append(
                (precision, f"not recorded (run: cyclesr export precision {folder.path})")
            )
    for rec in sorted(mine, key=lambda r: r.ms):
        why = cpu_cannot_run(rec.precision, capabilities)
        if why is None and not (folder.path / rec.artifact).is_file():
            why = f"no {rec.artifact} in the model folder"
        if why is None and rec.source_sha256 != _source_digest(folder):
            why = f"recorded for another {ONNX_FILES['ab']} (re-run: cyclesr export precision)"
        if why is None:
            fails = rec.failures()
            why = "quality gate: " + "; ".join(fails) if fails else None
        if why is None and rec.speedup <= 1.0:
            why = f"not faster than FP32 when recorded ({rec.speedup:.2f}x)"
        if why is None:
            reason = f"precision auto: {rec.describe()} (gate: loss <= {MAX_PSNR_LOSS_DB} dB)"
            return PrecisionChoice(rec.precision, reason, rejected)
        rejected.append((rec.precision, why))
    return PrecisionChoice("fp32", "precision auto: fp32 (no reduced precision passes)", rejected)
