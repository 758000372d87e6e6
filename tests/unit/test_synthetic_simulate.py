"""Image formation and simulate_pair: shapes, noise model, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic import SynthConfig, simulate_pair
from cyclesr_deploy.synthetic.acquire import bin_sum, blur, quantise, to_hr_grid

EMPTY = {
    "filament_density": 0.0,
    "puncta_density": 0.0,
    "vesicle_density": 0.0,
    "membrane_probability": 0.0,
    "nucleus_probability": 0.0,
}


def test_blur_preserves_flux_and_bin_sums():
    img = np.zeros((64, 64), np.float32)
    img[30, 31] = 5.0
    out = blur(img, 2.0)
    assert out.dtype == np.float32
    assert out.sum() == pytest.approx(5.0, rel=1e-4)
    assert out.argmax() == 30 * 64 + 31
    b = bin_sum(np.arange(16.0).reshape(4, 4), 2)
    np.testing.assert_array_equal(b, [[10, 18], [42, 50]])
    with pytest.raises(InputError):
        bin_sum(np.zeros((5, 4)), 2)


def test_quantise_rounds_clips_and_types():
    q8 = quantise(np.array([-3.0, 0.4, 0.6, 100.0, 1e9]), 1.0, 8)
    np.testing.assert_array_equal(q8, [0, 0, 1, 100, 255])
    assert q8.dtype == np.uint8
    q16 = quantise(np.array([1e9]), 2.0, 16)
    assert q16.dtype == np.uint16 and q16[0] == 65535
    with pytest.raises(InputError):
        quantise(np.zeros(2), 1.0, 12)


def test_to_hr_grid_keeps_dtype_and_level():
    lr = np.full((16, 16), 1000, np.uint16)
    up = to_hr_grid(lr, (32, 32))
    assert up.shape == (32, 32) and up.dtype == np.uint16
    assert (up == 1000).all()


@pytest.mark.parametrize(
    ("binning", "lr_grid", "bit_depth", "lr_side"),
    [(1, "hr", 16, 64), (2, "hr", 16, 64), (2, "native", 8, 32), (4, "native", 16, 16)],
)
def test_shapes_and_dtypes(binning, lr_grid, bit_depth, lr_side):
    cfg = SynthConfig(size=64, binning=binning, lr_grid=lr_grid, bit_depth=bit_depth)
    gt, lr, hr = simulate_pair(cfg, 0)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    assert gt.dtype == np.float32 and gt.shape == (64, 64)
    assert hr.dtype == dtype and hr.shape == (64, 64)
    assert lr.dtype == dtype and lr.shape == (lr_side, lr_side)


def test_ground_truth_scale_is_hr_peak():
    cfg = SynthConfig()
    gt, _, _ = simulate_pair(cfg, 3)
    peak = blur(gt, cfg.psf_sigma_px("hr")).max()
    assert 0.8 < peak <= 1.0 + 1e-4  # < 1 only if the brightest spot sits at the border


def test_seeding():
    cfg = SynthConfig(size=64)
    a = simulate_pair(cfg, 11)
    b = simulate_pair(cfg, 11)
    c = simulate_pair(cfg, 12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.gt, c.gt)
    # None -> config.seed
    np.testing.assert_array_equal(simulate_pair(cfg.model_copy(update={"seed": 11})).hr, a.hr)
    # a SeedSequence is not consumed; a Generator advances
    ss = np.random.SeedSequence(4)
    np.testing.assert_array_equal(simulate_pair(cfg, ss).lr, simulate_pair(cfg, ss).lr)
    g = np.random.default_rng(4)
    assert not np.array_equal(simulate_pair(cfg, g).gt, simulate_pair(cfg, g).gt)
    g1, g2 = np.random.default_rng(4), np.random.default_rng(4)
    np.testing.assert_array_equal(simulate_pair(cfg, g1).lr, simulate_pair(cfg, g2).lr)


@pytest.mark.parametrize("bad", [-1, 1.5, "seed", True])
def test_bad_seed(bad):
    with pytest.raises(InputError):
        simulate_pair(SynthConfig(size=32), bad)


def test_noise_model_on_an_empty_field():
    """No structures: each pixel is Poisson(photons·background) + N(0, read²), times the gain."""
    cfg = SynthConfig(
        size=256,
        structures=EMPTY,
        hr={"photons": 200.0, "background": 0.5, "read_noise": 3.0},
        lr={"photons": 50.0, "background": 0.4, "read_noise": 2.0},
        binning=2,
        lr_grid="native",
    )
    _, lr, hr = simulate_pair(cfg, 0)
    e_hr = hr / cfg.gain("hr")
    assert e_hr.mean() == pytest.approx(100.0, rel=0.01)
    assert e_hr.var() == pytest.approx(100.0 + 9.0, rel=0.05)
    e_lr = lr / cfg.gain("lr")  # 2x2 binned: 4·20 photons, read noise once per binned pixel
    assert e_lr.mean() == pytest.approx(80.0, rel=0.02)
    assert e_lr.var() == pytest.approx(80.0 + 4.0, rel=0.1)


def test_defaults_lr_has_raised_background_and_more_noise():
    cfg = SynthConfig()
    _, lr, hr = simulate_pair(cfg, 0)
    full = 65535.0
    # Fig. 1: LR background ~45-55 / 255, HR ~5-15 / 255
    assert 0.1 < np.percentile(lr, 10) / full < 0.25
    assert np.percentile(hr, 10) / full < 0.06
    # background noise relative to the peak: LR >> HR
    flat = SynthConfig(structures=EMPTY)
    _, lr0, hr0 = simulate_pair(flat, 0)
    rel_lr = lr0.std() / (cfg.gain("lr") * cfg.lr.photons)
    rel_hr = hr0.std() / (cfg.gain("hr") * cfg.hr.photons)
    assert rel_lr > 2 * rel_hr
