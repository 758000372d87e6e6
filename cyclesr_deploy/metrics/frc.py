"""Fourier ring correlation of two independent acquisitions, fixed 1/7 threshold.

Hand-written: a ring sum over two FFTs is a few lines of numpy, and the small FRC packages on PyPI
(e.g. ``frc``) bring their own conventions and dependencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cyclesr_deploy._checks import image2d, min_size, positive, same_shape
from cyclesr_deploy.errors import InputError


@dataclass(frozen=True, slots=True)
class FrcResult:
    """``frequencies``: ring centres in cycles/px (k/N, k = 1 .. N//2, N = min side).
    ``correlation``: FRC per ring (-1..1; NaN for an empty or all-zero ring).
    ``cutoff``: first crossing below the threshold in cycles/px, linearly interpolated; 0.0 when
    the first ring is already below it; the last frequency (Nyquist) when it never falls below.
    ``resolution_px = 1 / cutoff`` (inf for 0); ``resolution = pixel_size / cutoff`` or None."""

    frequencies: np.ndarray
    correlation: np.ndarray
    cutoff: float
    resolution_px: float
    resolution: float | None


def _frc(a: np.ndarray, b: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    ny, nx = a.shape
    n = min(ny, nx)
    fa = np.fft.fft2(a - a.mean())
    fb = np.fft.fft2(b - b.mean())
    # Ring index k = round(N * |q|), q in cycles/px; non-square grids are measured in cycles/px
    # so a ring is the same frequency band along both axes.
    qy = np.fft.fftfreq(ny)[:, None]
    qx = np.fft.fftfreq(nx)[None, :]
    ring = np.rint(n * np.sqrt(qy**2 + qx**2)).astype(np.intp).ravel()
    n_rings = n // 2 + 1
    keep = ring < n_rings
    ring = ring[keep]

    def ring_sum(v: np.ndarray) -> np.ndarray:
        return np.bincount(ring, weights=v.ravel()[keep], minlength=n_rings)

    num = ring_sum(np.real(fa * np.conj(fb)))
    den = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (num / den)[1:]
    freqs = np.arange(1, n_rings) / n

    below = np.flatnonzero(~(corr >= threshold))  # NaN counts as below
    if below.size == 0:
        cutoff = float(freqs[-1])
    elif below[0] == 0:
        cutoff = 0.0
    else:
        i = below[0]
        c0, c1 = corr[i - 1], corr[i]
        t = (c0 - threshold) / (c0 - c1) if np.isfinite(c1) else 0.0
        cutoff = float(freqs[i - 1] + t * (freqs[i] - freqs[i - 1]))
    return freqs, corr, cutoff


def frc(
    a: np.ndarray,
    b: np.ndarray,
    *,
    pixel_size: float | None = None,
    threshold: float = 1 / 7,
) -> FrcResult:
    """FRC of two images of the same field with independent noise; cut-off at ``threshold``.

    ``FRC(k) = sum_ring Re(A conj(B)) / sqrt(sum_ring |A|^2 * sum_ring |B|^2)`` with A, B the DFTs
    of the mean-subtracted images and 1-px rings ``round(N * |q|) = k``. The cut-off is the first
    frequency where FRC drops below 1/7 (Nieuwenhuizen et al. 2013); resolution = 1/cut-off.
    For a Gaussian-blurred signal with white noise, ``cutoff ~ sqrt(ln(6 SNR0)) / (2 pi sigma)``.
    ``a`` and ``b`` must be *independent* acquisitions: for the two halves of a single split image
    the frequencies must be corrected by sqrt(2) (not done here).
    """
    x, y = image2d(a, "a"), image2d(b, "b")
    same_shape(x, y, "a", "b")
    min_size(x, "a", 8)
    positive(pixel_size, "pixel_size")
    if not 0 < threshold < 1:
        raise InputError(f"threshold: must be in (0, 1), got {threshold}")
    return _frc_result(x, y, pixel_size, threshold)


def _frc_result(
    a: np.ndarray, b: np.ndarray, pixel_size: float | None, threshold: float
) -> FrcResult:
    freqs, corr, cutoff = _frc(a.astype(np.float64), b.astype(np.float64), threshold)
    res_px = 1 / cutoff if cutoff > 0 else math.inf
    res = None if pixel_size is None else pixel_size * res_px
    return FrcResult(freqs, corr, cutoff, res_px, res)
