"""CUF: the paper's "cut-off frequency" (radius enclosing 95 % of the Fourier magnitude).

Hand-written because it is the paper's own ad-hoc metric (``cutoff_metric`` in
``catrujilla/cycleGAN-SR_confocal:metrics.py``); no library implements it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import UnivariateSpline

from cyclesr_deploy._checks import image2d, min_size

RING_WIDTH = 5  # px
FIRST_EDGE = 1  # px; rings are [1, 6), [6, 11), ... from the (N/2 + 1, N/2 + 1) "centre"


@dataclass(frozen=True, slots=True)
class CufResult:
    """``ring_index``: paper units (fractional index of 5-px rings, higher = more high frequencies).
    ``cycles_per_pixel``: ``(1 + 5 * (ring_index + 1)) / N`` = outer edge (in px) of the
    cumulative ring at that index over the (smaller) image side N: ring k covers radii
    [1 + 5 k, 1 + 5 (k + 1)) px, and the cumulative energy at index k includes all of it. (The
    research notes approximate the radius as ``1 + 5 * CUF``, the ring's *inner* edge, 5 px less.)
    0.5 is Nyquist along an axis; the rings reach into the spectrum's corners, so values up to
    ~0.7 occur (noise).

    Degenerate images: all spectral magnitude at DC (a constant image, the all-zero image
    included) or so little beyond it that the fit passes 95 % before the first evaluated sample
    give ``ring_index = 1.0``, the lower end of the paper's evaluation grid ``arange(1, 300, 0.1)``
    ("nothing beyond the lowest frequencies"); a fit that never reaches 95 % gives the upper end,
    299.9. ``cycles_per_pixel`` always follows the formula above."""

    ring_index: float
    cycles_per_pixel: float


def cuf_ring_energy(image: np.ndarray) -> np.ndarray:
    """Magnitude ``|fftshift(fft2(image))|`` summed per 5-px ring (the paper's ``ft_profile``).

    Distances are measured from ``(N_y/2 + 1, N_x/2 + 1)`` exactly as the paper (one pixel off
    numpy's DC, which therefore sits at sqrt(2) px in ring 0; the pixel at distance 0 is in no
    ring).
    Ring edges are ``arange(1, N, 5)`` with N = min side; frequencies beyond the last edge
    (the corners) are ignored. Non-square images (paper code: square only): each axis' offset is
    scaled by ``N / N_axis`` so that a ring covers the same cycles/px band along both axes; for
    square images this is exactly the paper's code.
    """
    a = np.asarray(image, dtype=np.float64)
    ny, nx = a.shape
    n = min(ny, nx)
    mag = np.abs(np.fft.fftshift(np.fft.fft2(a)))
    dy = (np.arange(ny) - (ny / 2 + 1)) * (n / ny)
    dx = (np.arange(nx) - (nx / 2 + 1)) * (n / nx)
    dist = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    edges = np.arange(FIRST_EDGE, n, RING_WIDTH)
    ring = np.searchsorted(edges, dist, side="right") - 1  # edges[k] <= d < edges[k+1], exact
    keep = (ring >= 0) & (ring < edges.size - 1)
    return np.bincount(ring[keep], weights=mag[keep], minlength=edges.size - 1)


def _cuf(a: np.ndarray) -> CufResult:
    profile = cuf_ring_energy(a)
    energy = np.cumsum(profile)
    target = 0.95 * energy[-1]
    n = min(a.shape)
    v = np.arange(1, 300, 0.1)
    if energy[-1] <= 0:
        # all-zero image: no spectrum, i.e. a constant image with DC 0; report it as a constant
        # image (everything at DC: the lower clamp below) rather than as a special value
        return _cuf_result(float(v[0]), n)
    x = np.arange(energy.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # FITPACK "s too small"; checked below
        spline = UnivariateSpline(x, energy, s=0.01, k=3)
    inside = v[v <= x[-1]]
    if np.abs(spline(inside) - np.interp(inside, x, energy)).max() > profile.max():
        spline = UnivariateSpline(x, energy, s=0, k=3)  # ill-conditioned s=0.01 fit: interpolate
    fit = spline(v)
    above = np.flatnonzero(fit > target)
    if above.size == 0 or above[0] == 0:
        # Paper code would raise (never above) or wrap to v[-1] (above from the start, e.g. a
        # constant image): clamp to the evaluated range instead.
        ring_index = float(v[-1] if above.size == 0 else v[0])
    else:
        i = above[0]
        frac = (target - fit[i - 1]) / (fit[i] - fit[i - 1])
        ring_index = float(v[i - 1] + frac * (v[i] - v[i - 1]))
    return _cuf_result(ring_index, n)


def _cuf_result(ring_index: float, n: int) -> CufResult:
    return CufResult(ring_index, (FIRST_EDGE + RING_WIDTH * (ring_index + 1)) / n)


def cuf(image: np.ndarray) -> CufResult:
    """Paper CUF of one image (meant for float images in [0, 1], as the paper).

    Invariant to a positive scale factor; an offset changes DC and so changes CUF.

    Exact port of ``cutoff_metric``: magnitude spectrum (DC included) summed in 5-px rings,
    cumulative sum E, ``UnivariateSpline(arange(len(E)), E, s=0.01, k=3)`` evaluated on
    ``arange(1, 300, 0.1)`` (extrapolated past the last ring, as the paper), first point above
    ``0.95 * E[-1]`` and linear interpolation with its predecessor. One deliberate deviation: with
    E ~ 1e5 the s=0.01 fit is ill-conditioned and FITPACK sometimes returns a spline oscillating
    by orders of magnitude between the rings (the paper's code then returns garbage); when the
    fit strays from E's piecewise-linear interpolant by more than the largest ring increment,
    the interpolating spline (s=0) is used instead. Otherwise the two agree closely. See
    :class:`CufResult` for the units and :func:`cuf_ring_energy` for the ring geometry
    (incl. non-square images).

    Units: ``ring_index`` in the paper's ring-index units and
    ``cycles_per_pixel = (1 + 5 * (ring_index + 1)) / N`` (N = smaller side), the outer edge of
    the cumulative ring; the research notes approximate the ring radius as ``1 + 5 * CUF`` px.
    A constant image (including all zeros) gives ``ring_index = 1.0``: see :class:`CufResult`.

    Caveat: the magnitude sum is dominated by DC and the noise floor. For noise-free filaments CUF
    falls with blur (about 21.8/15.7/11.3/9.7 for sigma 0.7/1/1.5/2 px at 256^2), but Poisson
    noise or uint8 quantisation raise it (25-29 with 50-200 photons regardless of blur), so it is
    not a reliable resolution measure: prefer :func:`decorrelation` or :func:`frc`.
    """
    a = image2d(image, "image")
    min_size(a, "image", 32)
    return _cuf(a.astype(np.float64))
