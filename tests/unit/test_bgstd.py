"""BGSTD and the ground-truth background mask (paper_metrics.md section 2.3 / 6.6)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.metrics import background_mask, bgstd
from cyclesr_deploy.metrics.bgstd import _close, to_grey8, to_grey_float


@pytest.fixture
def disk_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((256, 256), np.uint8)
    gt[disk((128, 128), 40)] = 200
    pred = np.clip(gt + 30 + rng.normal(0, 5, gt.shape), 0, 255).astype(np.uint8)
    return pred, gt


def test_disk_known_answer(disk_pair):
    pred, gt = disk_pair
    bg = background_mask(gt)
    # OpenCV's own pipeline (cv2 4.10, checked outside the test suite) gives 0.8851; the float
    # blur here differs from OpenCV's fixed point at 8 of 65536 mask pixels.
    assert bg.mean() == pytest.approx(0.885, abs=0.002)
    assert not bg[disk((128, 128), 41)].any()
    assert bgstd(pred, gt) == pytest.approx(5.02, abs=0.1)
    assert bgstd(pred, gt, zero_filled=True) == pytest.approx(10.5, abs=0.15)


def test_zero_filled_is_the_mixture_formula(disk_pair):
    pred, gt = disk_pair
    bg = background_mask(gt)
    p = bg.mean()
    mu, sd = pred[bg].mean(), pred[bg].std()
    expect = np.sqrt(p * sd**2 + p * (1 - p) * mu**2)
    assert bgstd(pred, gt, zero_filled=True) == pytest.approx(expect, rel=1e-9)
    assert bgstd(pred, gt) == pytest.approx(sd, rel=1e-12)


def test_clipping_at_zero_halves_the_noise(rng):
    gt = np.zeros((256, 256), np.uint8)
    gt[disk((128, 128), 40)] = 200
    pred = np.clip(gt + rng.normal(0, 5, gt.shape), 0, 255).astype(np.uint8)
    assert bgstd(pred, gt) == pytest.approx(2.75, abs=0.1)


def test_quantize_false_keeps_the_noise_below_zero(rng):
    """The same background noise N(0, 5^2) at level 0, as float grey levels: the paper's pipeline
    clips and truncates it (2.75, as above), quantize=False measures it (5.0)."""
    gt = np.zeros((256, 256), np.uint8)
    gt[disk((128, 128), 40)] = 200
    pred = gt + rng.normal(0, 5, gt.shape)
    bg = background_mask(gt)
    assert bgstd(pred, gt, data_range=255) == pytest.approx(2.75, abs=0.1)
    assert bgstd(pred, gt, data_range=255, quantize=False) == pytest.approx(5.0, abs=0.1)
    assert bgstd(pred, gt, data_range=255, quantize=False) == pytest.approx(pred[bg].std())
    # float in [0, 1] with the default data_range 1: same grey levels
    assert bgstd(pred / 255, gt / 255, quantize=False) == pytest.approx(pred[bg].std())
    filled = bgstd(pred, gt, data_range=255, quantize=False, zero_filled=True)
    assert filled == pytest.approx(np.where(bg, pred, 0).std())
    # uint8 input is unchanged by either choice
    p8 = np.clip(pred + 30, 0, 255).astype(np.uint8)
    assert bgstd(p8, gt, quantize=False) == bgstd(p8, gt)
    assert to_grey_float(np.array([[65535, 257]], np.uint16)).tolist() == [[255.0, 1.0]]
    np.testing.assert_allclose(to_grey_float(np.array([[-0.2, 1.7]])), [[-51.0, 433.5]])


def test_float_input_is_scaled_and_truncated(disk_pair):
    pred, gt = disk_pair
    # (k + 0.5) / 255 truncates back to k after * 255: same grey levels as the uint8 input
    pf, gf = (pred + 0.5) / 255, (gt + 0.5) / 255
    assert bgstd(pf, gf) == bgstd(pred, gt)
    assert bgstd(pf * 4, gf * 4, data_range=4.0) == bgstd(pred, gt)
    assert to_grey8(np.array([[0.999, 1.7, -0.2]])).tolist() == [[254, 255, 0]]
    assert to_grey8(np.array([[65535, 257]], np.uint16)).tolist() == [[255, 1]]


def test_degenerate_ground_truths(rng):
    pred = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    assert background_mask(np.zeros((64, 64), np.uint8)).all()
    assert bgstd(pred, np.zeros((64, 64), np.uint8)) == pytest.approx(pred.std())
    # OpenCV's Otsu returns 0 for a single-valued image, so a constant > 0 is all foreground
    const = np.full((64, 64), 7, np.uint8)
    assert not background_mask(const).any()
    assert np.isnan(bgstd(pred, const))
    assert bgstd(pred, const, zero_filled=True) == 0.0


def test_validation(rng):
    g = rng.random((64, 64))
    with pytest.raises(InputError, match="prediction has shape"):
        bgstd(rng.random((64, 60)), g)
    with pytest.raises(InputError, match="ground_truth: expected a 2-D"):
        background_mask(rng.random((2, 64, 64)))
    bad = g.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="prediction: contains 1 non-finite"):
        bgstd(bad, g)
    with pytest.raises(InputError, match="data_range"):
        bgstd(g, g, data_range=-1)
    with pytest.raises(InputError, match="ground_truth: expected a numeric image, got dtype bool"):
        background_mask(g > 0.5)


def test_separable_closing_equals_25x25_square(rng):
    m = ndi.gaussian_filter(rng.random((96, 80)), 3) > 0.52
    square = np.ones((25, 25), bool)
    ref = ndi.binary_erosion(ndi.binary_dilation(m, square), square, border_value=1)
    np.testing.assert_array_equal(_close(m), ref)
