"""Gaussian confocal PSF model against the numbers of research notes §5.1 (Zhang et al. 2007)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic import (
    confocal_psf_sigma_nm,
    nyquist_pixel_nm,
    pinhole_radius_nm,
    widefield_psf_sigma_nm,
)

LAM, NA = 500.0, 1.0  # so that sigma in nm / 500 is sigma in units of λ/NA


def _unit(sigma_nm: float) -> float:
    return sigma_nm / (LAM / NA)


def test_point_pinhole_equal_wavelengths_is_0154_lambda_over_na():
    assert _unit(confocal_psf_sigma_nm(LAM, LAM, NA, 0.0)) == pytest.approx(0.1540, rel=2e-3)


def test_widefield_least_squares_sigma_is_0210_lambda_over_na():
    assert _unit(widefield_psf_sigma_nm(LAM, NA)) == pytest.approx(0.2104, rel=1e-3)


def test_point_pinhole_is_widefield_over_sqrt2_within_4_percent():
    # Airy² vs Airy: FWHM ratio 1.393 ≈ √2 (§5.1)
    ratio = widefield_psf_sigma_nm(LAM, NA) / confocal_psf_sigma_nm(LAM, LAM, NA, 0.0)
    assert ratio == pytest.approx(math.sqrt(2), rel=0.04)


def test_open_pinhole_tends_to_widefield_like_excitation_spot():
    wide = widefield_psf_sigma_nm(LAM, NA)
    assert confocal_psf_sigma_nm(LAM, LAM, NA, 1e3) == pytest.approx(wide, rel=0.04)
    # at >= 2 AU the lateral resolution is essentially widefield (within 5 %)
    assert confocal_psf_sigma_nm(LAM, LAM, NA, 2.0) == pytest.approx(wide, rel=0.05)


@pytest.mark.parametrize(
    ("pinhole_au", "wave_optics"),
    # least-squares Gaussian sigma of Airy·(Airy ⊛ disk), λ/NA units, computed with scipy j1
    [(0.0, 0.1540), (0.25, 0.1574), (0.5, 0.1681), (1.0, 0.2036), (2.0, 0.2105), (5.0, 0.2102)],
)
def test_finite_pinhole_model_within_8_percent_of_wave_optics(pinhole_au, wave_optics):
    model = _unit(confocal_psf_sigma_nm(LAM, LAM, NA, pinhole_au))
    assert model == pytest.approx(wave_optics, rel=0.08)
    if pinhole_au <= 0.5:
        assert model == pytest.approx(wave_optics, rel=0.01)


def test_monotonic_in_pinhole():
    sig = [confocal_psf_sigma_nm(488, 520, 1.4, au) for au in (0, 0.25, 0.5, 1, 2, 4, 8)]
    assert all(np.diff(sig) > 0)


def test_product_rule_for_different_wavelengths():
    s_ex = 0.154 * math.sqrt(2) * 488 / 1.4
    s_em = 0.154 * math.sqrt(2) * 600 / 1.4
    expected = 1 / math.sqrt(1 / s_ex**2 + 1 / s_em**2)
    assert confocal_psf_sigma_nm(488, 600, 1.4, 0.0) == pytest.approx(expected, rel=1e-3)


def test_scales_as_lambda_over_na():
    a = confocal_psf_sigma_nm(488, 520, 1.4, 0.7)
    assert confocal_psf_sigma_nm(2 * 488, 2 * 520, 1.4, 0.7) == pytest.approx(2 * a)
    assert confocal_psf_sigma_nm(488, 520, 0.7, 0.7) == pytest.approx(2 * a)


def test_pinhole_radius_one_airy_unit_is_first_airy_zero():
    assert pinhole_radius_nm(1.0, 520, 1.4) == pytest.approx(0.6098 * 520 / 1.4)


def test_nyquist_pixel_worked_example():
    # 488 nm, NA 1.3 -> 46.9 nm (§5.1)
    assert nyquist_pixel_nm(488, 1.3) == pytest.approx(46.9, abs=0.05)


@pytest.mark.parametrize(
    "args",
    [
        (0, 520, 1.4, 1),
        (488, -1, 1.4, 1),
        (488, 520, 0, 1),
        (488, 520, 1.4, -0.1),
        (488, 520, float("nan"), 1),
        (488, 520, 1.4, float("inf")),
    ],
)
def test_bad_parameters_raise_input_error(args):
    with pytest.raises(InputError):
        confocal_psf_sigma_nm(*args)
