"""The in-domain distribution of the trust statistics: ``trust.json`` in the model folder.

Written by :func:`cyclesr_deploy.trust.calibrate.calibrate` (``cyclesr export trust``), read by
:class:`~cyclesr_deploy.trust.score.TrustScorer`. It records the sha256 of the weights it was
measured with (``generator.onnx`` and ``generator_ab.pt``, whichever exist): once either changes
the calibration is *stale* and is refused with the command that renews it, never silently used
for another model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import ONNX_FILES, WEIGHTS, ModelFolder

log = logging.getLogger(__name__)

SCHEMA_VERSION: Literal["1"] = "1"
#: bump when a statistic's definition changes: older calibrations are then stale
FEATURE_VERSION = 2
#: the files a calibration is tied to (the weights the runtime may run)
TIED = (ONNX_FILES["ab"], WEIGHTS["ab"])
RENEW_HINT = "cyclesr export trust {d}"


class FeatureStats(BaseModel):
    """One statistic over the calibration frames: robust centre and spread; ``side``: which
    deviation is suspicious (``high``/``low``: only values above/below the centre)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    median: float
    scale: float = Field(gt=0)  # 1.4826 * MAD, floored
    side: Literal["high", "low", "both"] = "both"
    values: list[float] = Field(default_factory=list)  # the calibration frames' values


class TrustCalibration(BaseModel):
    """What ``trust.json`` holds (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["1"] = SCHEMA_VERSION
    feature_version: int = FEATURE_VERSION
    weights_sha256: dict[str, str]
    sigma: float = Field(ge=0, description="LR-from-HR blur, output px")
    features: dict[str, FeatureStats]
    threshold: float = Field(gt=0, le=1, description="frames scoring below are untrusted")
    n_frames: int = Field(ge=1)
    false_alarm_rate: float = Field(ge=0, le=1, description="on the calibration frames")
    data: str = Field(description="where the calibration frames came from")
    created: str = ""
    version: str = ""


def tied_digests(folder: ModelFolder) -> dict[str, str]:
    """sha256 of the files a calibration is tied to, for those present."""
    return {n: folder.digest(n) for n in TIED if (folder.path / n).is_file()}


def stale_reason(cal: TrustCalibration, folder: ModelFolder) -> str | None:
    """Why ``cal`` does not belong to the model in ``folder`` now (None: it does)."""
    if cal.feature_version != FEATURE_VERSION:
        v = cal.feature_version
        return f"statistics version {v}, this cyclesr-deploy computes {FEATURE_VERSION}"
    now = tied_digests(folder)
    for name, digest in cal.weights_sha256.items():
        if name not in now:
            return f"{name} was calibrated but is missing now"
        if now[name] != digest:
            was, is_ = digest[:12], now[name][:12]
            return f"{name} changed since the calibration (sha256 {is_}, calibrated {was})"
    extra = sorted(set(now) - set(cal.weights_sha256))
    if extra:
        return f"{', '.join(extra)} is newer than the calibration (not recorded in it)"
    return None


def read_calibration(model_dir: str | Path) -> TrustCalibration | None:
    """The folder's calibration, or None when it has none; a stale or unreadable one raises
    :class:`InputError` naming the renewal command."""
    folder = ModelFolder(model_dir)
    path = folder.trust_json
    if not path.is_file():
        return None
    hint = RENEW_HINT.format(d=folder.path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"trust calibration {path} is unreadable ({exc}); renew it: {hint}"
        raise InputError(msg) from exc
    version = raw.get("feature_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version != FEATURE_VERSION:  # another schema: stale first
        reason = f"statistics version {version}, this cyclesr-deploy computes {FEATURE_VERSION}"
        raise InputError(f"trust calibration {path} is stale: {reason}; renew it: {hint}")
    try:
        cal = TrustCalibration.model_validate(raw)
    except ValidationError as exc:
        msg = f"trust calibration {path} is unreadable ({exc}); renew it: {hint}"
        raise InputError(msg) from exc
    reason = stale_reason(cal, folder)
    if reason is not None:
        raise InputError(f"trust calibration {path} is stale: {reason}; renew it: {hint}")
    return cal
