"""BGSTD: standard deviation of the prediction over the ground truth's background (paper metric).

Port of ``bgstd_batch`` in ``catrujilla/cycleGAN-SR_confocal:metrics.py`` (OpenCV) to scipy and
scikit-image. The mask comes from the *ground truth*; the value is in 8-bit grey levels (of the
prediction, optionally without the paper's clipping and truncation: see :func:`bgstd`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from cyclesr_deploy._checks import image2d, positive, same_shape

# cv2.GaussianBlur(g, (151, 151), 0): OpenCV's auto sigma 0.3 * ((151 - 1) / 2 - 1) + 0.8 = 23.0.
_WIDE_SIGMA, _WIDE_RADIUS = 23.0, 75
# cv2.GaussianBlur(g, (5, 5), 0): for odd ksize <= 7 and sigma <= 0 OpenCV does not use its sigma
# formula (which would give 1.1) but the fixed binomial table ``small_gaussian_tab``.
_SMALL_KERNEL = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16
# cv2.getStructuringElement(MORPH_RECT, (25, 25)), applied as 1x25 then 25x1 (same result)
_CLOSING_1D = (np.ones((1, 25), dtype=bool), np.ones((25, 1), dtype=bool))


def _default_range(x: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return data_range
    return float(np.iinfo(x.dtype).max) if x.dtype.kind in "iu" else 1.0


def to_grey8(x: np.ndarray, data_range: float | None = None) -> np.ndarray:
    """Image as 8-bit grey levels the way the paper does it: scale, then truncate (no rounding).

    uint8 with ``data_range=None`` is returned unchanged. Otherwise ``x * 255 / data_range``,
    clipped to [0, 255] and truncated; ``data_range=None`` means 1.0 for float input and the
    dtype maximum for other integer types (uint16 -> 65535). No validation (internal helper).
    """
    if x.dtype == np.uint8 and data_range is None:
        return x
    scale = 255.0 / _default_range(x, data_range)
    return np.clip(x.astype(np.float64) * scale, 0, 255).astype(np.uint8)


def to_grey_float(x: np.ndarray, data_range: float | None = None) -> np.ndarray:
    """``x * 255 / data_range`` as float64, neither clipped nor truncated (same ``data_range``
    default as :func:`to_grey8`; uint8 keeps its values). No validation (internal helper)."""
    return x.astype(np.float64) * (255.0 / _default_range(x, data_range))


def _blur8(g8: np.ndarray, wide: bool) -> np.ndarray:
    """Float Gaussian blur with OpenCV's kernel and BORDER_REFLECT_101 (= scipy 'mirror'), rounded
    to uint8. OpenCV blurs 8-bit images in fixed point, so single pixels may differ by 1 level."""
    f = g8.astype(np.float64)
    if wide:
        out = ndi.gaussian_filter(f, _WIDE_SIGMA, radius=_WIDE_RADIUS, mode="mirror")
    else:
        out = ndi.correlate1d(f, _SMALL_KERNEL, axis=0, mode="mirror")
        out = ndi.correlate1d(out, _SMALL_KERNEL, axis=1, mode="mirror")
    return np.floor(out + 0.5).astype(np.uint8)


def _otsu_fg(b8: np.ndarray) -> np.ndarray:
    """``cv2.threshold(b, 0, 255, THRESH_BINARY + THRESH_OTSU) > 0``: pixels above Otsu's level.

    OpenCV returns threshold 0 for a single-valued image (skimage would return the value)."""
    if b8.min() == b8.max():
        return b8 > 0
    return b8 > threshold_otsu(b8)


def _close(m: np.ndarray) -> np.ndarray:
    """Binary closing with OpenCV's border handling (outside pixels never win). scipy rather than
    skimage: ``skimage.morphology.binary_closing`` is deprecated in 0.26 and ``closing(mode=...)``
    is missing from the 0.22 we support."""
    for fp in _CLOSING_1D:
        m = ndi.binary_dilation(m, fp)
    for fp in _CLOSING_1D:
        m = ndi.binary_erosion(m, fp, border_value=1)
    return m


def _mask8(g8: np.ndarray) -> np.ndarray:
    fg = _close(_otsu_fg(_blur8(g8, wide=True))) | _close(_otsu_fg(_blur8(g8, wide=False)))
    return ~fg


def background_mask(gt: np.ndarray, *, data_range: float | None = None) -> np.ndarray:
    """Background mask of a ground-truth image (True = background), the paper's pipeline.

    GT as 8-bit grey levels (:func:`to_grey8`); two blurs equivalent to
    ``cv2.GaussianBlur(G, (151, 151), 0)`` (sigma 23.0, 151 taps) and
    ``cv2.GaussianBlur(G, (5, 5), 0)`` (OpenCV's fixed 5-tap binomial kernel), borders reflected
    without repeating the edge (BORDER_REFLECT_101); Otsu threshold of each; 25x25 square closing
    (outside pixels ignored, as OpenCV); union of the two foregrounds; inverted.
    """
    g = image2d(gt, "ground_truth")
    positive(data_range, "data_range")
    return _mask8(to_grey8(g, data_range))


def _background_std(p_grey: np.ndarray, bg: np.ndarray) -> float:
    """Std (ddof 0) of ``p_grey`` over the background mask ``bg``; NaN if the mask is empty."""
    return float(p_grey[bg].std()) if bg.any() else float("nan")


def _zero_filled_std(p_grey: np.ndarray, bg: np.ndarray) -> float:
    """The paper's number: foreground set to 0, std over all pixels."""
    return float(np.where(bg, p_grey, 0).astype(np.float64).std())


def bgstd(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    data_range: float | None = None,
    zero_filled: bool = False,
    quantize: bool = True,
) -> float:
    """Standard deviation (ddof 0) of the prediction over the GT background, in 8-bit grey levels.

    The background mask is :func:`background_mask` of the GT (as 8-bit, :func:`to_grey8`, with
    ``data_range``). The prediction is brought to the same grey levels, ``x * 255 / data_range``:
    with ``quantize=True`` (default, the paper's pipeline) clipped to [0, 255] and truncated to
    uint8 (:func:`to_grey8`; uint8 is used as is); with ``quantize=False`` kept as float, neither
    clipped nor truncated. Clipping matters whenever the background sits at the bottom of the
    range: a background at 0 (uint8 files, or a GT-range scaling where the GT's background is its
    minimum) loses the noise below it, and for Gaussian noise of std s the result is
    ``std(max(X, 0)) = 0.58 s`` (plus the truncation's bias), ~40 % too low.
    :func:`~cyclesr_deploy.metrics.evaluate` therefore uses ``quantize=False`` for the
    background-only value except under ``scaling="dtype"``.

    Default: std of the background pixels only (NaN if the mask is empty): the background
    *noise*. ``zero_filled=True`` is the paper's number: foreground set to 0 and std over all
    pixels, ``~ sqrt(p*s**2 + p*(1-p)*m**2)`` for background fraction p, background mean m and
    std s, so it mixes background level and noise.
    """
    p, g = image2d(pred, "prediction"), image2d(gt, "ground_truth")
    same_shape(p, g, "prediction", "ground_truth")
    positive(data_range, "data_range")
    bg = _mask8(to_grey8(g, data_range))
    p_grey = to_grey8(p, data_range) if quantize else to_grey_float(p, data_range)
    return _zero_filled_std(p_grey, bg) if zero_filled else _background_std(p_grey, bg)
