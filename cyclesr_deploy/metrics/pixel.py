"""Pixel-wise fidelity metrics: MSE, NRMSE, PSNR, SSIM (thin wrappers over ``skimage.metrics``).

Argument order is always ``(prediction, ground_truth)``; scikit-image's is the reverse.
Inputs are 2-D; integer inputs are converted to float64 without rescaling, so pass ``data_range``
in the images' own units (1.0 for images scaled to [0, 1], e.g. by
:func:`cyclesr_deploy.normalization.scale_to_unit`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from skimage.metrics import mean_squared_error, normalized_root_mse, structural_similarity

from cyclesr_deploy._checks import image2d, min_size, positive, same_shape
from cyclesr_deploy.errors import InputError

SsimConvention = Literal["paper", "skimage"]
NrmseNormalization = Literal["euclidean", "min-max", "mean"]


_PAPER_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def _pair(pred: object, gt: object) -> tuple[np.ndarray, np.ndarray]:
    p, g = image2d(pred, "prediction"), image2d(gt, "ground_truth")
    same_shape(p, g, "prediction", "ground_truth")
    return p.astype(np.float64, copy=False), g.astype(np.float64, copy=False)


def _mse(p: np.ndarray, g: np.ndarray) -> float:
    return float(mean_squared_error(g, p))


def _psnr(p: np.ndarray, g: np.ndarray, data_range: float) -> float:
    err = _mse(p, g)
    return math.inf if err == 0 else float(10 * np.log10(data_range**2 / err))


def _nrmse(p: np.ndarray, g: np.ndarray, normalization: NrmseNormalization) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(normalized_root_mse(g, p, normalization=normalization))


def _ssim(p: np.ndarray, g: np.ndarray, data_range: float, convention: SsimConvention) -> float:
    kw = _PAPER_SSIM if convention == "paper" else {}
    return float(structural_similarity(g, p, data_range=data_range, **kw))


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error ``mean((pred - gt)**2)``, in squared input units."""
    return _mse(*_pair(pred, gt))


def nrmse(
    pred: np.ndarray, gt: np.ndarray, normalization: NrmseNormalization = "euclidean"
) -> float:
    """Normalised RMSE, ``skimage.metrics.normalized_root_mse(gt, pred, normalization=...)``.

    ``"euclidean"``: ``rmse / sqrt(mean(gt**2))``; ``"min-max"``: ``rmse / (gt.max() - gt.min())``;
    ``"mean"``: ``rmse / gt.mean()``. Dimensionless; inf when the denominator is 0.
    """
    if normalization not in ("euclidean", "min-max", "mean"):
        raise InputError(
            f"normalization: must be 'euclidean', 'min-max' or 'mean', got {normalization!r}"
        )
    return _nrmse(*_pair(pred, gt), normalization)


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` in dB.

    ``data_range`` is the peak-to-peak range of the images' units (1.0 for [0, 1]: the paper's
    convention). Identical images give ``math.inf``.
    """
    positive(data_range, "data_range")
    return _psnr(*_pair(pred, gt), data_range)


def ssim(
    pred: np.ndarray,
    gt: np.ndarray,
    data_range: float = 1.0,
    convention: SsimConvention = "paper",
) -> float:
    """Mean structural similarity (dimensionless, 1 = identical).

    ``convention="paper"``: Wang et al. 2004 / ``tf.image.ssim`` as used by the paper: Gaussian
    11x11 window, sigma 1.5, K1 0.01, K2 0.03, population covariance, mean over the map with a
    5-px border cropped (= skimage ``gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False``).
    ``convention="skimage"``: scikit-image defaults (7x7 uniform window, sample covariance).
    ``C1 = (0.01 * data_range)**2``, ``C2 = (0.03 * data_range)**2``.
    """
    positive(data_range, "data_range")
    if convention not in ("paper", "skimage"):
        raise InputError(f"convention: must be 'paper' or 'skimage', got {convention!r}")
    p, g = _pair(pred, gt)
    min_size(g, "ground_truth", 11 if convention == "paper" else 7)
    return _ssim(p, g, data_range, convention)
