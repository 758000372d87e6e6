"""Gaussian approximation of the lateral confocal PSF (all lengths in nm).

Model (Zhang, Zerubia & Olivo-Marin, Appl. Opt. 46:1819, 2007, and the numbers in the project's
research notes §5.1, all in units of λ/NA):

* widefield Airy intensity PSF, least-squares Gaussian: sigma = 0.2104;
* confocal with a point pinhole and λex = λem (PSF = Airy²): sigma = 0.1540;
* a confocal PSF is the product excitation PSF x detection PSF, so for Gaussians
  ``1/sigma² = 1/sigma_ex² + 1/sigma_det²``.

Each arm (excitation at λex, emission at λem) is a Gaussian of sigma = ``ARM_SIGMA``·λ/NA with
``ARM_SIGMA = 0.1540·√2 = 0.2178``, chosen so the point-pinhole limit reproduces 0.1540 exactly
(a product of two 0.2104 Gaussians would give 0.1488, because Airy² has weaker rings than Airy).

Finite pinhole: the detection PSF is the emission PSF convolved with the pinhole disk back-projected
to the sample, radius rho = pinhole_au · 0.6098 λem/NA (1 Airy unit = Airy-disk *diameter*
1.2197 λem/NA, measured at the emission wavelength). A uniform disk of radius rho has a per-axis
standard deviation rho/2, so ``sigma_det² = sigma_em² + (rho/2)²``. As the pinhole opens,
sigma → sigma_ex (the widefield-like excitation spot; "≥ 1 AU gives essentially widefield lateral
resolution").

Accuracy against least-squares Gaussian fits of the wave-optics PSF Airy·(Airy ⊛ disk), λex = λem
(computed with scipy's ``j1``): 0 AU 0.1540 (model 0.1540), 0.25 AU 0.1574 (0.1584),
0.5 AU 0.1681 (0.1685), 1 AU 0.2036 (0.1883, -7.5 %), 2 AU 0.2105 (0.2064, -2 %),
5 AU 0.2102 (0.2156, +2.6 %). The simple model is within 1 % for closed pinholes (≤ 0.5 AU) and
within 8 % everywhere; it is smooth and monotonic in the pinhole size, which the wave-optics fit
(a sharp transition near 1 AU) is not.
"""

from __future__ import annotations

import math

from cyclesr_deploy._checks import positive
from cyclesr_deploy.errors import InputError

#: least-squares Gaussian sigma of the widefield Airy intensity PSF, in λ/NA
WIDEFIELD_SIGMA = 0.2104
#: least-squares Gaussian sigma of the point-pinhole confocal PSF (Airy², λex = λem), in λ/NA
CONFOCAL_POINT_SIGMA = 0.1540
#: sigma of one arm (excitation or emission) of the confocal model, in λ/NA
ARM_SIGMA = CONFOCAL_POINT_SIGMA * math.sqrt(2.0)
#: radius of the first Airy zero, in λ/NA (one Airy unit is twice this)
AIRY_RADIUS = 0.6098
#: FWHM of a Gaussian in units of its sigma
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _check(wavelength_ex_nm: float, wavelength_em_nm: float, na: float) -> None:
    positive(wavelength_ex_nm, "wavelength_ex_nm")
    positive(wavelength_em_nm, "wavelength_em_nm")
    positive(na, "na")


def pinhole_radius_nm(pinhole_au: float, wavelength_em_nm: float, na: float) -> float:
    """Radius (nm, in sample space) of a pinhole of ``pinhole_au`` Airy units at λem."""
    positive(wavelength_em_nm, "wavelength_em_nm")
    positive(na, "na")
    if not (math.isfinite(pinhole_au) and pinhole_au >= 0):
        raise InputError(f"pinhole_au: must be a finite number >= 0, got {pinhole_au!r}")
    return pinhole_au * AIRY_RADIUS * wavelength_em_nm / na


def widefield_psf_sigma_nm(wavelength_nm: float, na: float) -> float:
    """Least-squares Gaussian sigma (nm) of the widefield Airy PSF: 0.2104 λ/NA."""
    positive(wavelength_nm, "wavelength_nm")
    positive(na, "na")
    return WIDEFIELD_SIGMA * wavelength_nm / na


def confocal_psf_sigma_nm(
    wavelength_ex_nm: float, wavelength_em_nm: float, na: float, pinhole_au: float
) -> float:
    """Lateral sigma (nm) of the Gaussian-approximated confocal PSF; see the module docstring.

    ``pinhole_au`` = 0 is the ideal point pinhole (0.154 λ/NA for λex = λem); large pinholes
    tend to the excitation spot 0.218 λex/NA.
    """
    _check(wavelength_ex_nm, wavelength_em_nm, na)
    rho = pinhole_radius_nm(pinhole_au, wavelength_em_nm, na)
    sigma_ex = ARM_SIGMA * wavelength_ex_nm / na
    sigma_em = ARM_SIGMA * wavelength_em_nm / na
    sigma_det_sq = sigma_em**2 + (rho / 2.0) ** 2
    return 1.0 / math.sqrt(1.0 / sigma_ex**2 + 1.0 / sigma_det_sq)


def nyquist_pixel_nm(wavelength_ex_nm: float, na: float) -> float:
    """Nyquist pixel size (nm) for confocal imaging, λex / (8·NA) (NA = n·sin(alpha))."""
    positive(wavelength_ex_nm, "wavelength_ex_nm")
    positive(na, "na")
    return wavelength_ex_nm / (8.0 * na)
