"""Image-quality metrics for super-resolution output and :func:`evaluate`, which runs them all.

Every function takes ``(prediction, ground_truth)`` in that order, 2-D arrays, and raises
:class:`~cyclesr_deploy.errors.InputError` naming the argument for mismatched shapes, NaN/inf,
non-numeric (bool included) and non-2-D input. numpy/scipy/scikit-image only.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from cyclesr_deploy._checks import image2d, min_size, positive, same_shape
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.metrics.bgstd import (
    _background_std,
    _mask8,
    _zero_filled_std,
    background_mask,
    bgstd,
    to_grey8,
    to_grey_float,
)
from cyclesr_deploy.metrics.cuf import CufResult, _cuf, cuf
from cyclesr_deploy.metrics.decorrelation import (
    DecorrelationResult,
    _decorrelation_result,
    decorrelation,
)
from cyclesr_deploy.metrics.frc import FrcResult, _frc_result, frc
from cyclesr_deploy.metrics.pixel import _mse, _nrmse, _psnr, _ssim, mse, nrmse, psnr, ssim
from cyclesr_deploy.normalization import SCALING_MODES, ScalingMode, scale_to_unit

__all__ = [
    "CufResult",
    "DecorrelationResult",
    "FrcResult",
    "QualityReport",
    "background_mask",
    "bgstd",
    "cuf",
    "decorrelation",
    "evaluate",
    "frc",
    "mse",
    "nrmse",
    "psnr",
    "reference_bgstd",
    "ssim",
]

MIN_EVALUATE_SIZE = 48  # decorrelation apodises 20 px per edge


class QualityReport(BaseModel):
    """All metrics of one (prediction, ground truth) pair; see :func:`evaluate` for conventions.

    JSON: infinities/NaN serialise as the strings ``"Infinity"``/``"NaN"`` (pydantic
    ``ser_json_inf_nan="strings"``), e.g. the PSNR of identical images, and read back as floats
    with :meth:`model_validate_json`. ``None`` means "not computed" (no ``prediction_repeat`` or
    no ``pixel_size``).
    """

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    scaling: str
    shape: tuple[int, int]
    pixel_size: float | None
    psnr: float
    ssim: float
    ssim_skimage: float
    mse: float
    nrmse: float
    psnr_care: float
    ssim_care: float
    bgstd: float
    bgstd_zero_filled: float
    background_fraction: float
    cuf_ring_index: float
    cuf_cycles_per_pixel: float
    cuf_ring_index_gt: float
    cuf_cycles_per_pixel_gt: float
    decorrelation_kc_max: float
    decorrelation_a0: float
    decorrelation_resolution_px: float
    decorrelation_resolution: float | None
    decorrelation_kc_max_gt: float
    frc_cutoff: float | None = None
    frc_resolution_px: float | None = None
    frc_resolution: float | None = None

    def rows(self) -> list[tuple[str, float | None, str, str]]:
        """(metric, value, unit, convention) for a table, unique names, in a fixed order; None =
        not computed (print as blank). Physical resolutions are in pixel_size's unit."""
        s = f"scaling={self.scaling}"
        care = "GT pct 0.1/99.9 (min/max if sparse)"
        bg = "uint8 as paper" if self.scaling == "dtype" else f"unclipped float, {s}"
        return [
            ("PSNR", self.psnr, "dB", f"data range 1, {s}"),
            ("SSIM", self.ssim, "", f"paper/TF: Gaussian 11x11 s=1.5, population cov, {s}"),
            ("SSIM (skimage)", self.ssim_skimage, "", f"skimage defaults: 7x7 uniform, {s}"),
            ("MSE", self.mse, "(scaled intensity)^2", s),
            ("NRMSE", self.nrmse, "", f"euclidean: rmse / rms(gt), {s}"),
            ("PSNR (CARE)", self.psnr_care, "dB", f"{care}, prediction affinely fitted"),
            ("SSIM (CARE)", self.ssim_care, "", f"{care}, paper SSIM"),
            ("BGSTD", self.bgstd, "8-bit grey levels", f"std over GT background only, {bg}"),
            (
                "BGSTD (paper)",
                self.bgstd_zero_filled,
                "8-bit grey levels",
                "foreground as 0, clipped+truncated uint8",
            ),
            ("background fraction", self.background_fraction, "", "GT mask: blur+Otsu+closing"),
            ("CUF", self.cuf_ring_index, "ring index", "paper: 95% magnitude, 5-px rings"),
            ("CUF radius", self.cuf_cycles_per_pixel, "cycles/px", "(1 + 5 (index + 1)) / N"),
            ("CUF (GT)", self.cuf_ring_index_gt, "ring index", "same, on the ground truth"),
            ("decorrelation kc", self.decorrelation_kc_max, "1 = Nyquist", "Descloux 2019"),
            (
                "decorrelation A0",
                self.decorrelation_a0,
                "",
                "SNR estimate, DC removed as the ImageJ plugin (MATLAB differs for large means)",
            ),
            ("decorrelation resolution", self.decorrelation_resolution_px, "px", "2 / kc"),
            (
                "decorrelation resolution (physical)",
                self.decorrelation_resolution,
                "pixel_size unit",
                "2 px_size / kc",
            ),
            ("decorrelation kc (GT)", self.decorrelation_kc_max_gt, "1 = Nyquist", "on GT"),
            ("FRC cut-off", self.frc_cutoff, "cycles/px", "1/7, prediction vs repeat"),
            ("FRC resolution", self.frc_resolution_px, "px", "1 / cut-off"),
            (
                "FRC resolution (physical)",
                self.frc_resolution,
                "pixel_size unit",
                "px_size / cut-off",
            ),
        ]


def reference_bgstd(reference: np.ndarray, scaling: ScalingMode = "gt") -> float:
    """BGSTD of a reference image over its own background, exactly as :func:`evaluate` reports
    ``bgstd`` for a prediction equal to it (for the reference row of a comparison table)."""
    g = image2d(reference, "reference")
    if scaling not in SCALING_MODES:
        raise InputError(f"scaling: must be one of {SCALING_MODES}, got {scaling!r}")
    if scaling == "dtype":
        g8 = to_grey8(g)
        return _background_std(g8, _mask8(g8))
    _, gs = scale_to_unit(g, g, scaling)
    return _background_std(to_grey_float(gs, 1.0), _mask8(to_grey8(gs, 1.0)))


def evaluate(
    prediction: np.ndarray,
    ground_truth: np.ndarray,
    *,
    pixel_size: float | None = None,
    scaling: ScalingMode = "gt",
    prediction_repeat: np.ndarray | None = None,
) -> QualityReport:
    """Compute every metric for one 2-D prediction against its ground truth.

    ``scaling`` (:func:`~cyclesr_deploy.normalization.scale_to_unit`) brings both images to ~[0, 1]
    first: ``"gt"`` (default: GT min/max -> 0/1), ``"dtype"`` (uint8 / 255 etc.: the paper's
    convention; float data must already be in [0, 1], else InputError, and integer data using
    less than 1/16 of its dtype's range warn), ``"care"`` (GT percentiles 0.1/99.9, or min/max for
    a sparse GT). PSNR/MSE/NRMSE/SSIM use data range 1 on the scaled pair;
    ``psnr_care``/``ssim_care`` always use the "care" scaling.
    BGSTD is in 8-bit grey levels (255 x the scaled unit); the background mask is always computed
    from the scaled GT as 8 bit, as in the paper. ``bgstd`` (background only): with ``"gt"`` and
    ``"care"`` the std of the *unclipped float* scaled prediction (``255 * ps``), because clipping
    at 0 and truncating to 8 bit would cut off the noise below the GT's minimum, which is usually
    its background level (~40 % too low for Gaussian noise); with ``"dtype"`` the paper's exact
    8-bit pipeline on the raw data (uint8 taken as is, others scaled, clipped and truncated).
    ``bgstd_zero_filled`` (the paper's number) always uses the clipped and truncated 8-bit
    prediction. See :func:`~cyclesr_deploy.metrics.bgstd.bgstd` (``quantize``).
    CUF and decorrelation describe the scaled prediction alone (``*_gt``: the scaled GT);
    ``decorrelation_a0`` follows the ImageJ plugin (DC removed), which differs from MATLAB's A0 for
    images with a large mean.
    FRC needs ``prediction_repeat``, the output for a second, independent acquisition of the same
    field; FRC is invariant to each image's affine scaling, so raw values are used.
    ``pixel_size`` (any unit) turns px resolutions into physical ones.
    """
    p = image2d(prediction, "prediction")
    g = image2d(ground_truth, "ground_truth")
    same_shape(p, g, "prediction", "ground_truth")
    min_size(g, "ground_truth", MIN_EVALUATE_SIZE)
    positive(pixel_size, "pixel_size")
    if scaling not in SCALING_MODES:
        raise InputError(f"scaling: must be one of {SCALING_MODES}, got {scaling!r}")
    rep = None
    if prediction_repeat is not None:
        rep = image2d(prediction_repeat, "prediction_repeat")
        same_shape(rep, p, "prediction_repeat", "prediction")

    ps, gs = scale_to_unit(p, g, scaling)
    pc, gc = scale_to_unit(p, g, "care")
    if scaling == "dtype":  # paper-exact: the raw data as 8 bit (uint8 as is)
        p8, g8 = to_grey8(p), to_grey8(g)
        p_grey = p8
    else:  # 8-bit mask and paper value; unclipped float grey levels for the noise
        p8, g8 = to_grey8(ps, 1.0), to_grey8(gs, 1.0)
        p_grey = to_grey_float(ps, 1.0)
    bg = _mask8(g8)
    bg_only, zero_filled = _background_std(p_grey, bg), _zero_filled_std(p8, bg)
    c_pred, c_gt = _cuf(ps), _cuf(gs)
    dec = _decorrelation_result(ps, pixel_size, 50, 10, 20)
    dec_gt = _decorrelation_result(gs, None, 50, 10, 20)
    frc_fields: dict[str, float | None] = {}
    if rep is not None:
        f = _frc_result(p, rep, pixel_size, 1 / 7)
        frc_fields = {
            "frc_cutoff": f.cutoff,
            "frc_resolution_px": f.resolution_px,
            "frc_resolution": f.resolution,
        }
    err = _mse(ps, gs)
    return QualityReport(
        scaling=scaling,
        shape=(int(g.shape[0]), int(g.shape[1])),
        pixel_size=pixel_size,
        psnr=_psnr(ps, gs, 1.0),
        ssim=_ssim(ps, gs, 1.0, "paper"),
        ssim_skimage=_ssim(ps, gs, 1.0, "skimage"),
        mse=err,
        nrmse=_nrmse(ps, gs, "euclidean"),
        psnr_care=_psnr(pc, gc, 1.0),
        ssim_care=_ssim(pc, gc, 1.0, "paper"),
        bgstd=bg_only,
        bgstd_zero_filled=zero_filled,
        background_fraction=float(bg.mean()),
        cuf_ring_index=c_pred.ring_index,
        cuf_cycles_per_pixel=c_pred.cycles_per_pixel,
        cuf_ring_index_gt=c_gt.ring_index,
        cuf_cycles_per_pixel_gt=c_gt.cycles_per_pixel,
        decorrelation_kc_max=dec.kc_max,
        decorrelation_a0=dec.a0,
        decorrelation_resolution_px=dec.resolution_px,
        decorrelation_resolution=dec.resolution,
        decorrelation_kc_max_gt=dec_gt.kc_max,
        **frc_fields,
    )
