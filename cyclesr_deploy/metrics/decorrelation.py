"""Image resolution by decorrelation analysis (Descloux, Grussmayer, Radenovic, Nat. Methods 2019).

Hand-written: no numpy/scipy/scikit-image implementation exists. Own numpy code following the
behaviour of the reference MATLAB ``getDcorr.m`` v1.1.8 (``Ades91/ImDecorr``, with
``getDcorrLocalMax.m``, ``getCorrcoef.m``, ``apodImRect.m``); the DC term is zeroed first as the
ImageJ plugin does ("Remove mean from Ir"). Zeroing DC leaves kc_max alone but changes A0 for
images with a large mean (MATLAB's d0 then peaks at r(2) because of DC: on the reference
``test_image.tif`` kc_max is 0.2845 either way, A0 0.571 here vs 0.369 without zeroing).
Computed in float64 (MATLAB: single), so the 1e-3 truncation of a coefficient can differ in rare
ties.

Because the normalised spectrum ``In = F/|F|`` carries the phase of ``F`` and every filter is real
and radial, each correlation reduces to ``sum(w |F|) / (||w F|| * sqrt(n))`` over a disc (n = number
of non-zero Fourier pixels in the disc). It is computed with cumulative sums over pixels sorted by
radius: one FFT per image, no FFT per curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cyclesr_deploy._checks import image2d, min_size, positive
from cyclesr_deploy.errors import InputError

_MIN_SNR = 0.05  # peaks with amplitude below this are discarded (reference code)
_LOCAL_MAX_DROP = 0.0005  # getDcorrLocalMax acceptance margin
_G_MIN = 0.15  # smallest high-pass width of the first search


@dataclass(frozen=True, slots=True)
class DecorrelationResult:
    """``kc_max``: cut-off in normalised frequency (1 = Nyquist = 0.5 cycles/px; 0 = none found).
    ``a0``: amplitude of the unfiltered curve's peak (SNR estimate, 0-1). It follows the ImageJ
    plugin, which removes the DC term first; MATLAB's ``getDcorr.m`` v1.1.8 keeps it, so its A0
    differs for images with a large mean (same kc_max; see the module docstring).
    ``resolution_px = 2 / kc_max`` in px (inf when ``kc_max == 0``).
    ``resolution = 2 * pixel_size / kc_max`` in pixel_size's unit (None without pixel_size)."""

    kc_max: float
    a0: float
    resolution_px: float
    resolution: float | None


def apodize_edges(image: np.ndarray, n: int = 20) -> np.ndarray:
    """Cosine taper of the outer ``n`` px of each side towards the image mean (``apodImRect``).

    Per axis of length L: ``x = |linspace(-L/2, L/2, L)|``; in the band ``x > L/2 - n`` the phase
    ``mean(x_band) - x`` is linearly mapped from its [min, max] to [-pi/2, pi/2]; weight
    ``(sin(phase) + 1) / 2`` (1 inside the band's inner edge, 0 on the border); 2-D weight is the
    outer product; ``out = (image - mean) * weight + mean``. Returns float64.
    """
    a = np.asarray(image, dtype=np.float64)

    def weight(length: int) -> np.ndarray:
        x = np.abs(np.linspace(-length / 2, length / 2, length))
        band = x > length / 2 - n
        w = np.ones(length)
        if band.any():
            d = np.where(band, x[band].mean() - x, 0.0)  # MATLAB: (-|x| - mean(-|x_band|)) * band
            span = d.max() - d.min()
            phase = -np.pi / 2 + (d - d.min()) / span * np.pi if span > 0 else np.zeros(length)
            w = np.where(band, (np.sin(phase) + 1) / 2, 1.0)
        return w

    mean = a.mean()
    return (a - mean) * np.outer(weight(a.shape[0]), weight(a.shape[1])) + mean


def _local_max(d: np.ndarray) -> int:
    """``getDcorrLocalMax``: index of the last acceptable local maximum of curve ``d``."""
    d = np.asarray(d)
    if d.size < 2:
        return 0
    end = d.size
    ind = int(np.argmax(d[:end]))
    while end > 1:
        if ind == end - 1:
            end -= 1
        elif ind == 0 or d[ind] - d[ind:end].min() >= _LOCAL_MAX_DROP:
            break
        else:
            end -= 1
        ind = int(np.argmax(d[:end]))
    return ind


class _Spectrum:
    """|F| of the (odd-cropped, DC-zeroed) image inside the unit disc, sorted by radius."""

    def __init__(self, im: np.ndarray) -> None:
        ny, nx = im.shape
        f = np.abs(np.fft.fftshift(np.fft.fft2(im)))
        f[ny // 2, nx // 2] = 0.0  # DC (centre of an odd-sized shifted spectrum)
        yy = np.linspace(-1, 1, ny)[:, None] ** 2
        xx = np.linspace(-1, 1, nx)[None, :] ** 2
        r2 = (yy + xx).ravel()
        mag = f.ravel()
        keep = r2 < 1.0
        order = np.argsort(r2[keep], kind="stable")
        self.r2 = r2[keep][order]
        self.mag = mag[keep][order]
        self.nonzero_cum = np.concatenate([[0], np.cumsum(self.mag > 0)])

    def curve(self, radii: np.ndarray, g: float | None) -> np.ndarray:
        """Decorrelation curve for radii (normalised), high-pass ``1 - exp(-2 g^2 R^2)`` if g."""
        w = self.mag if g is None else self.mag * (1.0 - np.exp(-2.0 * g * g * self.r2))
        c = math.sqrt(float(np.dot(w, w)))
        num_cum = np.concatenate([[0.0], np.cumsum(w)])
        idx = np.searchsorted(self.r2, np.asarray(radii) ** 2, side="left")  # R^2 < r^2
        with np.errstate(divide="ignore", invalid="ignore"):
            cc = num_cum[idx] / (c * np.sqrt(self.nonzero_cum[idx]))
        cc = np.floor(1000 * cc) / 1000  # getCorrcoef truncation
        return np.nan_to_num(cc, nan=0.0, posinf=0.0, neginf=0.0)


def _refined_g_range(first: np.ndarray, g: np.ndarray, rows: int) -> tuple[int, float, float]:
    """Pass-2 high-pass range from pass 1 (getDcorr.m v1.1.8).

    ``first`` = [k0, kc of the ``g.size`` pass-1 curves]; ``i1`` = slot of its *last* maximum.
    Slot 0 (the unfiltered d0 is best): ``[rows, g[0]]``; one of the two last slots (the smallest
    ``g``, i.e. the strongest high-pass filters): ``[g[i1 - 2], g[i1 - 1]]``; otherwise
    ``[g[i1 - 1], g[i1]]``, the widths around the best curve's. Returns ``(i1, g1, g2)``.
    """
    i1 = int(np.flatnonzero(first == first.max())[-1])
    if i1 == 0:
        return i1, float(rows), float(g[0])
    if i1 >= g.size - 1:
        return i1, float(g[i1 - 2]), float(g[i1 - 1])
    return i1, float(g[i1 - 1]), float(g[i1])


def _decorrelation(im: np.ndarray, n_r: int, n_g: int) -> tuple[float, float]:
    """Core of getDcorr.m on a float64 image (already apodised). Returns (kc_max, a0)."""
    n_r, n_g = max(n_r, 30), max(n_g, 5)  # reference input checks
    im = im[: im.shape[0] - (1 - im.shape[0] % 2), : im.shape[1] - (1 - im.shape[1] % 2)]
    spec = _Spectrum(im)
    rows = im.shape[0]

    r = np.linspace(0, 1, n_r)
    d0 = spec.curve(r, None)
    ind0 = _local_max(d0)
    k0, snr0 = float(r[ind0]), float(d0[ind0])

    g_max = 2 / r[ind0] if r[ind0] > 0 else max(im.shape) / 2
    g = np.concatenate([[rows / 4], np.exp(np.linspace(np.log(g_max), np.log(_G_MIN), n_g))])
    # kc/snr slots as in the reference: [k0, pass-1 curves (n_g + 1), pass-2 curves (n_g)], where
    # pass 2's first curve overwrites pass 1's last; d0's peak is appended at the end.
    kc = np.zeros(2 * n_g + 1)
    snr = np.zeros(2 * n_g + 1)
    kc[0], snr[0] = k0, snr0
    for refinement in range(2):
        for h, gh in enumerate(g):
            d = spec.curve(r, float(gh))
            ind = _local_max(d)
            slot = h + n_g * refinement + 1
            kc[slot], snr[slot] = r[ind], d[ind]
        if refinement == 0:
            i1, g1, g2 = _refined_g_range(kc[: n_g + 2], g, rows)
            g = np.exp(np.linspace(np.log(g1), np.log(g2), n_g))
            best = kc[i1]
            lo = max(best - (r[1] - r[0]), 0.0)
            hi = min(best + 0.4, 1.0, r[-1])
            r = np.linspace(lo, hi, n_r)
    kc = np.append(kc, k0)
    snr = np.append(snr, snr0)
    kc[snr < _MIN_SNR] = 0.0
    return float(kc.max()), snr0


def decorrelation(
    image: np.ndarray,
    *,
    pixel_size: float | None = None,
    n_r: int = 50,
    n_g: int = 10,
    apodize: int = 20,
) -> DecorrelationResult:
    """Cut-off frequency and resolution of one image by decorrelation analysis.

    Steps (reference defaults): edge apodisation over ``apodize`` px (:func:`apodize_edges`; 0 to
    skip); crop to odd sizes; spectrum in normalised coordinates (``linspace(-1, 1, N)`` per axis,
    1 = Nyquist); DC zeroed; unfiltered curve d0 over ``n_r`` radii in [0, 1]; ``n_g + 1`` Fourier
    high-pass filters ``1 - exp(-2 g^2 R^2)`` (g = rows/4, then geometric from 2/k0 to 0.15),
    refined once around the highest peak; peaks with amplitude < 0.05 discarded; ``kc_max`` = the
    highest remaining peak position, ``a0`` = the unfiltered peak's amplitude (DC removed as in
    the ImageJ plugin: differs from MATLAB's A0 for images with a large mean). Resolution follows
    the ImageJ plugin: ``2 * pixel_size / kc_max`` (about the FWHM for Gaussian blur).
    ``n_r < 30`` and ``n_g < 5`` are raised to those minimums as in the reference.
    """
    a = image2d(image, "image")
    positive(pixel_size, "pixel_size")
    if apodize < 0 or 2 * apodize >= min(a.shape):
        raise InputError(f"apodize: needs 0 <= 2 * apodize < min(image side), got {apodize}")
    min_size(a, "image", 16)
    return _decorrelation_result(a, pixel_size, n_r, n_g, apodize)


def _decorrelation_result(
    a: np.ndarray, pixel_size: float | None, n_r: int, n_g: int, apodize: int
) -> DecorrelationResult:
    im = a.astype(np.float64)
    if apodize:
        im = apodize_edges(im, apodize)
    kc, a0 = _decorrelation(im, n_r, n_g)
    res_px = 2 / kc if kc > 0 else math.inf
    res = None if pixel_size is None else pixel_size * res_px
    return DecorrelationResult(kc, a0, res_px, res)
