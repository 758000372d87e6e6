"""The in-domain distribution of the trust statistics: ``trust.json`` in the model folder.

Written by :func:`cyclesr_deploy.trust.calibrate.calibrate` (``cyclesr export trust``), read by
:class:`~cyclesr_deploy.trust.score.TrustScorer`. It records the sha256 (``ModelFolder.digest``)
of everything the outputs it was measured on depend on, whichever exist (:data:`TIED`):
``model.json`` (the normalization), ``generator.onnx``, the frozen-statistics graphs, the fp16
and int8 ONNX, and ``generator_ab.pt``, plus the backend and precision it ran. It is *stale*
(refused with the command that renews it, never silently used for another model) when a
recorded file changed, when a tied file appeared that it does not record, or when none of its
recorded weight files is left. A recorded file that is merely gone (a deploy folder without the
``.pt``) is not stale while another recorded weight file still matches. A folder with nothing
to tie to is refused at calibration time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cyclesr_deploy.builtin import resolve_model
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import (
    FROZEN_ONNX,
    MODEL_JSON,
    ONNX_FILES,
    ONNX_FP16,
    ONNX_INT8,
    WEIGHTS,
    ModelFolder,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION: Literal["1"] = "1"
#: bump when a statistic's definition changes: older calibrations are then stale
FEATURE_VERSION = 6
#: the weight files a calibration can be tied to (what the runtime may run)
TIED_WEIGHTS = (
    ONNX_FILES["ab"],
    FROZEN_ONNX["stats"],
    FROZEN_ONNX["tile"],
    ONNX_FP16,
    ONNX_INT8,
    WEIGHTS["ab"],
)
#: every file a calibration is tied to (model.json: the normalization)
TIED = (MODEL_JSON, *TIED_WEIGHTS)
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
    false_alarm_rate: float = Field(
        ge=0, le=1, description="conformal bound on in-domain frames flagged (k / (n + 1))"
    )
    data: str = Field(description="where the calibration frames came from")
    backend: str = ""
    precision: str = ""
    recorded: dict[str, list[float | None]] = Field(
        default_factory=dict, description="every statistic of every calibration frame"
    )
    created: str = ""
    version: str = ""


def tied_digests(folder: ModelFolder) -> dict[str, str]:
    """sha256 of the files a calibration is tied to, for those present."""
    return {n: folder.digest(n) for n in TIED if (folder.path / n).is_file()}


def _version_reason(version: object) -> str:
    return f"statistics version {version}, this cyclesr-deploy computes {FEATURE_VERSION}"


def stale_reason(cal: TrustCalibration, folder: ModelFolder) -> str | None:
    """Why ``cal`` does not belong to the model in ``folder`` now (None: it does)."""
    if cal.feature_version != FEATURE_VERSION:
        return _version_reason(cal.feature_version)
    now = tied_digests(folder)
    if not any(n in now for n in cal.weights_sha256 if n in TIED_WEIGHTS):
        return "none of the weight files it was calibrated on is left"
    for name, digest in cal.weights_sha256.items():
        if name not in now:
            if name == MODEL_JSON:
                return f"{name} was calibrated but is missing now"
            continue  # a pruned deploy folder: the files left must still match
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
    folder = ModelFolder(resolve_model(model_dir))
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
        raise InputError(
            f"trust calibration {path} is stale: {_version_reason(version)}; renew it: {hint}"
        )
    try:
        cal = TrustCalibration.model_validate(raw)
    except ValidationError as exc:
        msg = f"trust calibration {path} is unreadable ({exc}); renew it: {hint}"
        raise InputError(msg) from exc
    reason = stale_reason(cal, folder)
    if reason is not None:
        # an exported graph that no longer matches its export record was swapped or damaged:
        # that error (re-export) comes first; renewing the calibration on it would hide it
        graphs = [n for n in TIED_WEIGHTS if n.endswith(".onnx") and (folder.path / n).is_file()]
        folder.verify(*graphs)
        raise InputError(f"trust calibration {path} is stale: {reason}; renew it: {hint}")
    return cal
