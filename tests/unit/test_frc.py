"""FRC with the 1/7 threshold against the Gaussian-model answer sqrt(ln(6 SNR0)) / (2 pi sigma)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.metrics import frc

# (sigma px, SNR0 dB) from the table in paper_metrics.md 2.5
CASES = [(1, 30), (1, 20), (2, 30), (2, 20), (2, 15), (3, 20), (3, 15)]


def _pair(sigma: float, snr_db: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # periodic blur: the DFT then sees an exact Gaussian PSD (a reflected border adds leakage)
    signal = ndi.gaussian_filter(rng.standard_normal((256, 256)), sigma, mode="wrap")
    noise_sd = 10 ** (-snr_db / 20)
    return (
        signal + noise_sd * rng.standard_normal(signal.shape),
        signal + noise_sd * rng.standard_normal(signal.shape),
    )


@pytest.mark.parametrize(("sigma", "snr_db"), CASES)
def test_cutoff_matches_gaussian_model(sigma, snr_db):
    a, b = _pair(sigma, snr_db, seed=sigma * 100 + snr_db)
    theory = math.sqrt(math.log(6 * 10 ** (snr_db / 10))) / (2 * math.pi * sigma)
    r = frc(a, b)
    assert r.cutoff == pytest.approx(theory, rel=0.08)
    assert r.resolution_px == pytest.approx(1 / r.cutoff)


def test_rings_and_symmetry():
    a, b = _pair(2, 20, seed=1)
    r = frc(a, b, pixel_size=0.04)
    np.testing.assert_allclose(r.frequencies, np.arange(1, 129) / 256)
    assert r.correlation.shape == (128,)
    assert r.resolution == pytest.approx(0.04 / r.cutoff)
    r2 = frc(b, a)
    np.testing.assert_allclose(r2.correlation, r.correlation)
    # the cut-off lies between the last ring above and the first ring below the threshold
    i = int(np.flatnonzero(r.correlation < 1 / 7)[0])
    assert r.frequencies[i - 1] <= r.cutoff <= r.frequencies[i]


def test_limits():
    a, _ = _pair(1, 20, seed=2)
    same = frc(a, 2 * a + 5)  # perfectly correlated: never drops, cut-off at Nyquist
    np.testing.assert_allclose(same.correlation, 1.0)
    assert same.cutoff == 0.5 and same.resolution_px == 2.0
    rng = np.random.default_rng(0)
    unrelated = frc(rng.standard_normal((256, 256)), rng.standard_normal((256, 256)))
    assert unrelated.cutoff < 0.03
    zero = frc(np.zeros((64, 64)), rng.standard_normal((64, 64)))
    assert zero.cutoff == 0.0 and zero.resolution_px == math.inf


def test_non_square_uses_cycles_per_pixel():
    a, b = _pair(2, 20, seed=3)
    r = frc(a[:, :192], b[:, :192])
    assert r.frequencies[-1] == pytest.approx(0.5)
    theory = math.sqrt(math.log(600)) / (4 * math.pi)
    assert r.cutoff == pytest.approx(theory, rel=0.1)


def test_validation():
    a = np.zeros((64, 64))
    with pytest.raises(InputError, match="a has shape"):
        frc(a, np.zeros((64, 63)))
    with pytest.raises(InputError, match="b: expected a 2-D"):
        frc(a, np.zeros((1, 64, 64)))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="a: contains 1 non-finite"):
        frc(bad, a)
    with pytest.raises(InputError, match="threshold"):
        frc(a, a, threshold=1.5)
    with pytest.raises(InputError, match="pixel_size"):
        frc(a, a, pixel_size=-1.0)
