"""Score a frame against its model's trust calibration: :class:`TrustScorer`.

Each scored statistic (:data:`SIDES`, see :mod:`.features` for what each one sees) becomes a
robust z-score against the calibration frames (median, 1.4826 MAD) and a one- or two-sided
normal tail probability (the side is the direction in which outputs got worse on the
development frames); the frame's trust is the smallest of them times their number
(Bonferroni), capped at 1: ~1 for a frame like the calibration frames, small when any
statistic is far outside them on its suspicious side. A frame is untrusted when its trust falls
below the calibration's threshold (set on the calibration frames, see :mod:`.calibrate`).
Which statistics are scored, and on which side, is stored in the calibration (written from
:data:`SIDES`); the others are recorded with the frame, not scored.

A frame too small to score (shorter side below :data:`.features.MIN_SIDE`, e.g. 17 x 17 or
1 x N) gets a :class:`FrameTrust` with ``scored`` False: score 1.0, trusted, ``worst`` "not
scored" (no evidence either way; its record says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import log_ndtr

from cyclesr_deploy.trust.calibration import FeatureStats, TrustCalibration, read_calibration
from cyclesr_deploy.trust.features import InputStats, input_stats, output_stats

#: scored statistics and which side of the calibration is suspicious (chosen on the development
#: split with benchmarks/ood_rules.py: see benchmarks/README.md)
SIDES = {
    "level": "both",
    "gain": "both",
    "transfer_mid": "both",
    "transfer_high": "both",
    "consistency": "high",
    "invented": "high",
    "saturated": "high",
    "outside": "high",
}
#: every statistic, recorded with each frame (and each calibration frame)
STATISTICS = (
    "level",
    "saturated",
    "outside",
    "gain",
    "consistency",
    "unexplained",
    "invented",
    "transfer_low",
    "transfer_mid",
    "transfer_high",
    "transfer_top",
    "output_hf",
)
#: the smallest spread of a scored statistic: ``saturated``/``outside`` are ~0 in domain, so their
#: floor is their resolution; ``consistency`` (1 - R^2) is heavy-tailed in domain, its floor 0.05
#: (chosen on the development split) keeps it a guard against gross failures; the others: 1e-6
#: (the MAD decides)
FLOORS = {"saturated": 0.01, "outside": 0.01, "consistency": 0.05, "invented": 5e-4}
#: a non-finite statistic or z-score is written as this (JSON has no NaN/Infinity)
JSON_LIMIT = 1e9
NOT_SCORED = "not scored"


def finite(v: float) -> float | None:
    """``v`` for JSON: None for NaN, clamped to +-JSON_LIMIT."""
    if math.isnan(v):
        return None
    return float(min(JSON_LIMIT, max(-JSON_LIMIT, v)))


@dataclass(frozen=True)
class FrameTrust:
    """One frame's trust: ``score`` in [0, 1] (1: typical of the calibration frames),
    ``trusted`` (score >= the calibration's threshold), ``worst``: the statistic that set the
    score, ``features``: the raw statistics, ``z``: their robust z-scores; ``evidence``:
    -log10 of the unsaturated score (the same ranking, without underflow far outside the domain:
    what ROC curves are computed on); ``scored`` False: too small to score (score 1, trusted)."""

    score: float
    trusted: bool
    worst: str
    features: dict[str, float] = field(default_factory=dict)
    z: dict[str, float] = field(default_factory=dict)
    evidence: float = 0.0
    scored: bool = True

    def record(self) -> dict[str, object]:
        """JSON-ready summary for manifests and reports (finite numbers only)."""
        out: dict[str, object] = {
            "trust": float(f"{self.score:.4g}"),  # significant digits: far frames stay apart
            "evidence": finite(round(self.evidence, 3)),
            "trusted": self.trusted,
            "worst": self.worst,
            "z": {k: finite(round(v, 3)) for k, v in self.z.items()},
        }
        if not self.scored:
            out["scored"] = False
        return out


def log_tail(z: float, side: str) -> float:
    """Natural log of the normal tail probability of ``z`` (``high``: P(Z >= z); ``low``:
    P(Z <= z); ``both``: P(|Z| >= |z|)); -inf for an infinite ``z`` on its side."""
    if side == "high":
        return float(log_ndtr(-z))
    if side == "low":
        return float(log_ndtr(z))
    return float(math.log(2.0) + log_ndtr(-abs(z)))


def tail(z: float, side: str) -> float:
    """The normal tail probability of ``z`` (see :func:`log_tail`)."""
    return math.exp(log_tail(z, side))


class TrustScorer:
    """``begin(frame, low, high)`` when a frame starts (input statistics), ``finish(stats,
    output, low, high)`` once its output exists -> :class:`FrameTrust`; ``low``/``high``: the
    intensity mapping's input and output ranges (the runner's). Thread-safe (no state)."""

    def __init__(self, calibration: TrustCalibration, scale: int = 1) -> None:
        self.calibration = calibration
        self.scale = int(scale)

    @classmethod
    def for_model(cls, model_dir: str | Path, scale: int = 1) -> TrustScorer | None:
        """The model folder's scorer, None without a calibration (a stale one raises)."""
        cal = read_calibration(model_dir)
        return None if cal is None else cls(cal, scale)

    def begin(self, frame: np.ndarray, low: float, high: float) -> InputStats:
        return input_stats(frame, low, high)

    def features(
        self, stats: InputStats, output: np.ndarray, low: float, high: float
    ) -> dict[str, float]:
        """All statistics of one frame (raw values, before scoring)."""
        values = stats.scalars()
        values.update(output_stats(stats, output, low, high, self.calibration.sigma, self.scale))
        return values

    def finish(self, stats: InputStats, output: np.ndarray, low: float, high: float) -> FrameTrust:
        if not stats.scored:
            return FrameTrust(1.0, True, NOT_SCORED, scored=False)
        return self.judge(self.features(stats, output, low, high))

    def judge(self, values: dict[str, float]) -> FrameTrust:
        """The trust of a frame with statistics ``values``."""
        cal = self.calibration
        z: dict[str, float] = {}
        worst, log_p = "", 0.0
        for name, st in cal.features.items():
            v = values.get(name, math.nan)
            zi = (v - st.median) / st.scale if math.isfinite(v) else math.inf
            z[name] = zi
            lp = log_tail(zi, st.side) if math.isfinite(zi) else -math.inf
            if lp < log_p or not worst:
                worst, log_p = name, lp
        log_score = log_p + math.log(max(1, len(cal.features)))  # Bonferroni
        score = min(1.0, math.exp(log_score))
        evidence = -log_score / math.log(10.0)
        return FrameTrust(score, score >= cal.threshold, worst, dict(values), z, evidence)


def robust_stats(values: list[float], side: str, floor: float | None = None) -> FeatureStats:
    """Median and 1.4826 MAD (floored at ``floor``, default 1e-6, and at 1 % of |median|) of
    the finite ``values``."""
    floor = 1e-6 if floor is None else floor
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError("no finite values to calibrate on")
    med = float(np.median(a))
    mad = 1.4826 * float(np.median(np.abs(a - med)))
    scale = max(mad, floor, 0.01 * abs(med))
    return FeatureStats(median=med, scale=scale, side=side, values=[float(v) for v in a])  # type: ignore[arg-type]
