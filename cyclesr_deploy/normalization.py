"""Intensity normalisation shared by the metrics and the runtime.

All functions are pure (no in-place changes to their inputs). Conventions follow CSBDeep
(``csbdeep/utils/utils.py``: ``normalize``, ``normalize_minmse``) so that numbers are comparable
with CARE-style evaluations.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

from cyclesr_deploy._checks import image2d, same_shape
from cyclesr_deploy.errors import InputError

ScalingMode = Literal["dtype", "gt", "care"]
SCALING_MODES: tuple[str, ...] = ("dtype", "gt", "care")


def percentile_normalize(
    x: np.ndarray, pmin: float = 3, pmax: float = 99.8, *, clip: bool = False, eps: float = 1e-20
) -> np.ndarray:
    """Map the ``pmin``/``pmax`` percentiles of ``x`` to 0/1 (CSBDeep ``normalize``).

    ``(x - P[pmin]) / (P[pmax] - P[pmin] + eps)`` over all elements, computed and returned as
    float32; values outside [0, 1] are kept unless ``clip``. Percentiles are in percent (0-100).
    """
    a = image2d(x, "x", ndim=None)
    if not 0 <= pmin < pmax <= 100:
        raise InputError(f"pmin, pmax: need 0 <= pmin < pmax <= 100, got {pmin}, {pmax}")
    lo, hi = np.percentile(a, [pmin, pmax])
    out = _to01(a, lo, hi, eps)
    return np.clip(out, 0, 1) if clip else out


def _to01(a: np.ndarray, lo: float, hi: float, eps: float = 1e-20) -> np.ndarray:
    """CSBDeep's float32 ``(a - lo) / (hi - lo + eps)``."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    return (a.astype(np.float32) - lo32) / (hi32 - lo32 + np.float32(eps))


def normalize_to(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares affine fit ``alpha * x + beta`` of ``x`` to ``target`` (CSBDeep
    ``normalize_minmse``).

    ``alpha = cov(x, t) / (var(x) + 1e-10)`` (sample covariance, ddof 1, as ``np.cov``),
    ``beta = mean(t) - alpha * mean(x)``. Returns float32 in the units of ``target``.
    """
    a, t = image2d(x, "x", ndim=None), image2d(target, "target", ndim=None)
    same_shape(a, t, "x", "target")
    a64, t64 = a.astype(np.float64).ravel(), t.astype(np.float64).ravel()
    cov = np.cov(a64, t64) if a64.size > 1 else np.zeros((2, 2))
    alpha = cov[0, 1] / (cov[0, 0] + 1e-10)
    beta = t64.mean() - alpha * a64.mean()
    return (alpha * a.astype(np.float64) + beta).astype(np.float32)


# scaling="dtype" plausibility limits (see scale_to_unit)
DTYPE_FLOAT_MARGIN = 0.5  # float data must lie in [-0.5, 1.5]
DTYPE_MIN_USE = 1 / 16  # integer data peaking below 1/16 of the dtype maximum gets a warning
# scaling="care": below this fraction of the GT's min-max range the 0.1/99.9 % percentile range
# is degenerate (sparse GT: mostly one value) and min/max are used instead
CARE_MIN_PERCENTILE_RANGE = 1e-3
CARE_PERCENTILES = (0.1, 99.9)


def _dtype_unit(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` on the [0, 1] scale implied by its dtype, after checking that this is plausible."""
    if a.dtype.kind == "f":
        lo, hi = float(a.min()), float(a.max())
        if lo < -DTYPE_FLOAT_MARGIN or hi > 1 + DTYPE_FLOAT_MARGIN:
            raise InputError(
                f"{name}: scaling='dtype' takes float images to be in [0, 1] already, but this "
                f"one spans [{lo:.4g}, {hi:.4g}] (PSNR/SSIM/BGSTD would be meaningless); use "
                "scaling='gt' (by the ground truth's range) or rescale the data to [0, 1]"
            )
        return a.astype(np.float64)
    top = float(np.iinfo(a.dtype).max)
    peak = max(float(a.max()), -float(a.min()))
    if peak < DTYPE_MIN_USE * top:
        warnings.warn(
            f"{name}: scaling='dtype' divides by the {a.dtype} maximum {top:.0f}, but the data "
            f"peak at {peak:.0f} (< 1/16 of it, e.g. 12-bit data stored as uint16): the unused "
            "dtype range inflates PSNR/SSIM; scaling='gt' is likely what you want",
            UserWarning,
            stacklevel=4,
        )
    return a.astype(np.float64) / top


def _care_normalize_gt(g: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(g, CARE_PERCENTILES)
    g_min, g_max = float(g.min()), float(g.max())
    if hi - lo < CARE_MIN_PERCENTILE_RANGE * (g_max - g_min):
        return _to01(g, g_min, g_max)
    return _to01(g, lo, hi)


def scale_to_unit(
    pred: np.ndarray, gt: np.ndarray, mode: ScalingMode
) -> tuple[np.ndarray, np.ndarray]:
    """Bring a (prediction, ground truth) pair to a common ~[0, 1] float64 scale.

    Modes:
      * ``"dtype"``: each integer array divided by its dtype maximum (uint8 -> /255, the paper's
        convention), floats unchanged (they must already be on a [0, 1] scale). Guards: a float
        array outside [-0.5, 1.5] (e.g. 0..255 or 0..65535 floats) raises InputError naming it;
        an integer array whose peak ``max(|x|)`` is below 1/16 of its dtype maximum (e.g. 12-bit
        data in uint16, peak <= 4095 of 65535) gets a UserWarning, because the unused range
        shrinks every error and inflates PSNR/SSIM. ``"gt"`` is the usual remedy for both.
      * ``"gt"``: both mapped by the ground truth's range,
        ``(x - gt.min()) / (gt.max() - gt.min())``, so GT spans exactly [0, 1]; the prediction
        may fall outside.
      * ``"care"``: GT percentile-normalised (0.1 / 99.9 %, unclipped), the prediction affinely
        least-squares fitted to it (:func:`normalize_to`) as CARE/ZeroCostDL4Mic quality control
        does (without their extra zero-meaning). Sparse ground truths (e.g. a few puncta on a
        flat background, fewer than 0.1 % of the pixels bright) have nearly coinciding
        percentiles, which would blow the GT up to values in the thousands (or 1e20 when they are
        equal); when ``P99.9 - P0.1 < 1e-3 * (max - min)`` the GT's min/max are used instead.
    Validation of NaN/ndim is the caller's job; this checks ``mode``, matching shapes and, for
    ``"dtype"``, the value ranges above.
    """
    p, g = np.asarray(pred), np.asarray(gt)
    same_shape(p, g, "prediction", "ground_truth")
    if mode == "dtype":
        return _dtype_unit(p, "prediction"), _dtype_unit(g, "ground_truth")
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
        g_n = _care_normalize_gt(g)
        return normalize_to(p, g_n).astype(np.float64), g_n.astype(np.float64)
    raise InputError(f"mode: must be one of {SCALING_MODES}, got {mode!r}")


# --- runtime intensity mapping (enhance) ---------------------------------------------------------


def frame_percentiles(x: np.ndarray, pmin: float, pmax: float) -> tuple[float, float]:
    """``np.percentile(x, [pmin, pmax])`` (linear interpolation) over the whole frame.

    uint8/uint16 frames use an exact histogram (``np.bincount``), several times faster than
    sorting; other dtypes ``np.percentile``. NaN must have been rejected before.
    """
    a = np.asarray(x)
    if a.size == 0:
        raise InputError("frame_percentiles: empty frame")
    if not 0 <= pmin < pmax <= 100:
        raise InputError(f"pmin, pmax: need 0 <= pmin < pmax <= 100, got {pmin}, {pmax}")
    if a.dtype not in (np.uint8, np.uint16):
        lo, hi = np.percentile(a, [pmin, pmax])
        return float(lo), float(hi)
    cdf = np.cumsum(np.bincount(a.ravel(), minlength=256))
    n = a.size
    out = []
    for p in (pmin, pmax):
        rank = p / 100 * (n - 1)
        k = int(np.floor(rank))
        lo_v, hi_v = np.searchsorted(cdf, [k, min(k + 1, n - 1)], side="right")
        t = rank - k
        # numpy's _lerp: a + (b - a) t, computed from the nearer end for t >= 0.5
        v = hi_v - (hi_v - lo_v) * (1 - t) if t >= 0.5 else lo_v + (hi_v - lo_v) * t
        out.append(float(v))
    return out[0], out[1]


def stretch_to_range(
    image: np.ndarray, low: float, high: float, pmin: float, pmax: float
) -> np.ndarray:
    """``image`` as float32, mapped linearly so that its ``pmin``/``pmax`` percentiles land on
    ``low``/``high``: a stand-in frame in a model's input range (a model's normalization
    config gives all four), for test tensors and benchmarks."""
    lo, hi = frame_percentiles(image, pmin, pmax)
    gain = (high - low) / max(hi - lo, 1e-12)
    return ((np.asarray(image, np.float64) - lo) * gain + low).astype(np.float32)


class IntensityMapping:
    """Raw intensities <-> the generator's [-1, 1], as ``NormalizationConfig.to_model`` /
    ``from_model`` (bit-identical float32 arithmetic), with in-place variants for buffers.

    ``low_in``/``high_in`` map to -1/1 before the generator; -1/1 of its output map back to
    ``low_out``/``high_out``. :meth:`after` clips and rounds to an integer dtype's range.
    """

    __slots__ = (
        "_in_offset",
        "_in_scale",
        "_out_offset",
        "_out_scale",
        "high_in",
        "high_out",
        "low_in",
        "low_out",
    )

    def __init__(self, low_in: float, high_in: float, low_out: float, high_out: float) -> None:
        if not (high_in > low_in and high_out > low_out):
            raise InputError(
                f"intensity mapping: need high > low, got in {low_in}..{high_in}, "
                f"out {low_out}..{high_out}"
            )
        self.low_in, self.high_in = float(low_in), float(high_in)
        self.low_out, self.high_out = float(low_out), float(high_out)
        self._in_scale = np.float32(2.0 / (high_in - low_in))
        self._in_offset = np.float32(2.0 * low_in / (high_in - low_in) + 1)
        self._out_scale = np.float32((high_out - low_out) / 2)
        self._out_offset = np.float32(low_out)

    @classmethod
    def from_config(cls, norm) -> IntensityMapping:
        """From a model's ``NormalizationConfig``: domain A in, domain B out."""
        return cls(norm.low_a, norm.high_a, norm.low_b, norm.high_b)

    @classmethod
    def from_frame(cls, frame: np.ndarray, pmin: float, pmax: float) -> IntensityMapping:
        """Per-frame percentiles of the *whole* frame, in and out (the output is referred to
        the input's range, as CSBDeep's ``PercentileNormalizer.after``). A flat frame
        (percentiles equal) gets a range of 1 above its value."""
        lo, hi = frame_percentiles(frame, pmin, pmax)
        if not hi > lo:
            hi = lo + 1.0
        return cls(lo, hi, lo, hi)

    def scale_linear(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((gain, offset) of :meth:`before`, (gain, offset) of :meth:`after` for float
        output): each a single ``x * gain + offset``, with this mapping's float32 constants."""
        before = (float(self._in_scale), -float(self._in_offset))
        after = (float(self._out_scale), float(self._out_scale) + float(self._out_offset))
        return before, after

    def before(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Raw -> float32 model range; ``out`` (float32, may be ``x`` itself) is filled."""
        if out is None:
            out = np.empty(np.shape(x), np.float32)
        np.multiply(x, self._in_scale, out=out, casting="unsafe")
        np.subtract(out, self._in_offset, out=out)
        return out

    def after(self, y: np.ndarray, dtype: np.dtype, *, inplace: bool = False) -> np.ndarray:
        """Model output -> raw intensities as ``dtype``: float32 unclipped, integer dtypes
        clipped to their range and rounded to nearest. ``inplace`` reuses ``y`` (float32)."""
        y = np.asarray(y, dtype=np.float32)
        out = y if inplace else np.empty_like(y)
        np.add(y, np.float32(1), out=out)
        np.multiply(out, self._out_scale, out=out)
        np.add(out, self._out_offset, out=out)
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            return out if dtype == np.float32 else out.astype(dtype)
        info = np.iinfo(dtype)
        np.clip(out, info.min, info.max, out=out)
        np.rint(out, out=out)
        return out.astype(dtype)
