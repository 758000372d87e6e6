"""PSNR / MSE / NRMSE / SSIM: known answers, an independent SSIM, validation, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage as ndi
from skimage.metrics import structural_similarity

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.metrics import mse, nrmse, psnr, ssim


def _tf_ssim(x: np.ndarray, y: np.ndarray, max_val: float = 1.0) -> float:
    """tf.image.ssim re-derived: 'valid' 11-tap Gaussian (sigma 1.5) window, population moments."""
    c = np.arange(11) - 5.0
    g = np.exp(-(c**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def filt(a: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", sliding_window_view(a, (11, 11)), w)

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return float(np.mean(lum * cs))


@pytest.fixture
def pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    gt = ndi.gaussian_filter(rng.random((256, 256)), 2)
    gt = (gt - gt.min()) / (gt.max() - gt.min())
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    return pred, gt


def test_psnr_constant_offset_is_20_db(rng):
    gt = rng.random((256, 256)) * 0.9
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)
    assert mse(gt + 0.1, gt) == pytest.approx(0.01, rel=1e-12)


def test_psnr_identical_is_inf_and_data_range_scales(rng):
    gt = rng.random((64, 64))
    assert psnr(gt, gt) == math.inf
    a8 = (gt * 255).astype(np.uint8)
    b8 = np.clip(a8.astype(int) + 3, 0, 255).astype(np.uint8)
    assert psnr(b8, a8, data_range=255) == pytest.approx(psnr(b8 / 255, a8 / 255), abs=1e-9)


def test_nrmse_matches_definitions(pair):
    p, g = pair
    rmse = np.sqrt(np.mean((p - g) ** 2))
    assert nrmse(p, g) == pytest.approx(rmse / np.sqrt(np.mean(g**2)), rel=1e-12)
    assert nrmse(p, g, "min-max") == pytest.approx(rmse / (g.max() - g.min()), rel=1e-12)
    assert nrmse(p, g, "mean") == pytest.approx(rmse / g.mean(), rel=1e-12)


def test_ssim_paper_equals_independent_tf_style_implementation(pair):
    p, g = pair
    assert ssim(p, g) == pytest.approx(_tf_ssim(p, g), abs=1e-6)
    ref = structural_similarity(
        g, p, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(p, g) == pytest.approx(ref, abs=1e-6)


def test_ssim_skimage_convention_is_skimage_default(pair):
    p, g = pair
    assert ssim(p, g, convention="skimage") == pytest.approx(
        structural_similarity(g, p, data_range=1.0), abs=1e-12
    )
    assert ssim(p, g, convention="skimage") != pytest.approx(ssim(p, g), abs=1e-6)


def test_ssim_identical_is_one_and_data_range_matters(pair):
    p, g = pair
    assert ssim(g, g) == pytest.approx(1.0, abs=1e-12)
    assert ssim(g, g, convention="skimage") == pytest.approx(1.0, abs=1e-12)
    assert ssim(p * 255, g * 255, data_range=255) == pytest.approx(ssim(p, g), abs=1e-9)


@pytest.mark.parametrize("fn", [mse, nrmse, psnr, ssim])
def test_validation_names_the_argument(fn, rng):
    g = rng.random((32, 32))
    with pytest.raises(InputError, match="prediction has shape"):
        fn(rng.random((32, 31)), g)
    bad = g.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="prediction: contains 1 non-finite"):
        fn(bad, g)
    bad[3, 3] = np.inf
    with pytest.raises(InputError, match="ground_truth: contains 1 non-finite"):
        fn(g, bad)
    with pytest.raises(InputError, match="ground_truth: expected a 2-D image"):
        fn(g, np.stack([g, g]))
    with pytest.raises(InputError, match="prediction: expected a numeric image, got dtype bool"):
        fn(g > 0.5, g)


def test_ssim_and_psnr_argument_checks(rng):
    g = rng.random((8, 8))
    with pytest.raises(InputError, match="ground_truth: needs at least 11"):
        ssim(g, g)
    with pytest.raises(InputError, match="convention"):
        ssim(g, g, convention="tf")
    with pytest.raises(InputError, match="data_range"):
        psnr(g, g, data_range=0)
    with pytest.raises(InputError, match="normalization"):
        nrmse(g, g, normalization="rms")


_img = arrays(np.float64, (12, 12), elements=st.floats(0, 1, allow_nan=False, allow_infinity=False))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(a=_img, b=_img)
def test_properties_psnr_symmetric_mse_nonnegative_ssim_bounded(a, b):
    assert mse(a, b) >= 0
    assert mse(a, b) == pytest.approx(mse(b, a))
    assert psnr(a, b) == pytest.approx(psnr(b, a))
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    assert -1 - 1e-9 <= ssim(a, b) <= 1 + 1e-9
    assert mse(a, a) == 0 and psnr(a, a) == math.inf
