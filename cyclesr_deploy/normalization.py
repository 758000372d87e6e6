"""Intensity normalisation shared by the metrics and the runtime.

All functions are pure (no in-place changes to their inputs). Conventions follow CSBDeep
(``csbdeep/utils/utils.py``: ``normalize``, ``normalize_minmse``) so that numbers are comparable
with CARE-style evaluations.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from cyclesr_deploy._checks import same_shape
from cyclesr_deploy.errors import InputError

ScalingMode = Literal["dtype", "gt", "care"]
SCALING_MODES: tuple[str, ...] = ("dtype", "gt", "care")


def _numeric(x: object, name: str) -> np.ndarray:
    """N-D counterpart of ``_checks.image2d``: numeric, non-empty, finite."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if a.size == 0:
        raise InputError(f"{name}: array is empty (shape {a.shape})")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(f"{name}: contains {int((~np.isfinite(a)).sum())} non-finite value(s)")
    return a


def percentile_normalize(
    x: np.ndarray, pmin: float = 3, pmax: float = 99.8, *, clip: bool = False, eps: float = 1e-20
) -> np.ndarray:
    """Map the ``pmin``/``pmax`` percentiles of ``x`` to 0/1 (CSBDeep ``normalize``).

    ``(x - P[pmin]) / (P[pmax] - P[pmin] + eps)`` over all elements, computed and returned as
    float32; values outside [0, 1] are kept unless ``clip``. Percentiles are in percent (0-100).
    """
    a = _numeric(x, "x")
    if not 0 <= pmin < pmax <= 100:
        raise InputError(f"pmin, pmax: need 0 <= pmin < pmax <= 100, got {pmin}, {pmax}")
    lo, hi = (np.float32(v) for v in np.percentile(a, [pmin, pmax]))
    out = (a.astype(np.float32) - lo) / (hi - lo + np.float32(eps))
    return np.clip(out, 0, 1) if clip else out


def normalize_to(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares affine fit ``alpha * x + beta`` of ``x`` to ``target`` (CSBDeep
    ``normalize_minmse``).

    ``alpha = cov(x, t) / (var(x) + 1e-10)`` (sample covariance, ddof 1, as ``np.cov``),
    ``beta = mean(t) - alpha * mean(x)``. Returns float32 in the units of ``target``.
    """
    a, t = _numeric(x, "x"), _numeric(target, "target")
    same_shape(a, t, "x", "target")
    a64, t64 = a.astype(np.float64).ravel(), t.astype(np.float64).ravel()
    cov = np.cov(a64, t64) if a64.size > 1 else np.zeros((2, 2))
    alpha = cov[0, 1] / (cov[0, 0] + 1e-10)
    beta = t64.mean() - alpha * a64.mean()
    return (alpha * a.astype(np.float64) + beta).astype(np.float32)


def _dtype_unit(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "b":
        return a.astype(np.float64)
    if a.dtype.kind in "iu":
        return a.astype(np.float64) / np.iinfo(a.dtype).max
    return a.astype(np.float64)


def scale_to_unit(
    pred: np.ndarray, gt: np.ndarray, mode: ScalingMode
) -> tuple[np.ndarray, np.ndarray]:
    """Bring a (prediction, ground truth) pair to a common ~[0, 1] float64 scale.

    Modes:
      * ``"dtype"``: each integer array divided by its dtype maximum (uint8 -> /255, the paper's
        convention), floats unchanged (assumed to be in [0, 1] already).
      * ``"gt"``: both mapped by the ground truth's range,
        ``(x - gt.min()) / (gt.max() - gt.min())``, so GT spans exactly [0, 1]; the prediction
        may fall outside.
      * ``"care"``: GT percentile-normalised (0.1 / 99.9 %, unclipped), the prediction affinely
        least-squares fitted to it (:func:`normalize_to`) as CARE/ZeroCostDL4Mic quality control
        does (without their extra zero-meaning).
    Validation of NaN/ndim is the caller's job; this checks ``mode`` and matching shapes only.
    """
    p, g = np.asarray(pred), np.asarray(gt)
    same_shape(p, g, "prediction", "ground_truth")
    if mode == "dtype":
        return _dtype_unit(p), _dtype_unit(g)
    if mode == "gt":
        g64 = g.astype(np.float64)
        lo, hi = float(g64.min()), float(g64.max())
        if hi <= lo:
            raise InputError(
                "ground_truth: is constant, so scaling='gt' (by its range) is undefined; "
                "use scaling='dtype'"
            )
        return (p.astype(np.float64) - lo) / (hi - lo), (g64 - lo) / (hi - lo)
    if mode == "care":
        g_n = percentile_normalize(g, 0.1, 99.9)
        return normalize_to(p, g_n).astype(np.float64), g_n.astype(np.float64)
    raise InputError(f"mode: must be one of {SCALING_MODES}, got {mode!r}")
