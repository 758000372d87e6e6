"""Cheap per-frame statistics the trust score is built from (pure numpy/scipy).

Both frames are first put on the model's own intensity scale (0..1 = the 0.1/99.9 % percentile
range the model was trained with: :class:`~cyclesr_deploy.normalization.IntensityMapping`), so
a frame is compared with the training domain as the model sees it.

Input (computed when a frame starts, before the runner frees it):
  ``level`` (median), ``contrast`` (99.5th percentile - median), ``spectrum`` (the shape of the
  radially averaged power spectrum: log10 power in log-spaced bands, total normalised out).
Output (with the input's statistics):
  ``consistency``: 1 - R^2 of the output taken back through the LR imaging model (a Gaussian
  blur of ``sigma`` px, from the calibration) against the input, both smoothed by ``SMOOTH_PX``
  to damp the input's noise: an output the input cannot explain (invented structure, lost
  structure) scores high;
  ``output_hf``: log10 of the output's high-band over mid-band power: invented fine texture.

Hand-written (one line why): no library computes these per-frame statistics; scipy does the
filtering and numpy the FFTs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

#: crops of this side (px) estimate a frame's power spectrum (Welch-style average; cheap)
CROP = 256
MAX_CROPS = 4
#: band edges (cycles/px) of the spectrum profile, log-spaced up to Nyquist
BANDS = np.geomspace(0.02, 0.5, 11)
MID_BAND, HIGH_BAND = (0.06, 0.2), (0.25, 0.5)
SMOOTH_PX = 1.0
#: the statistics pass runs on every STRIDE-th pixel of each axis after blurring (its speed)
STRIDE = 2


def to_unit(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """``frame`` on a model's intensity scale: ``low`` -> 0, ``high`` -> 1 (float32)."""
    scale = np.float32(1.0 / (high - low)) if high > low else np.float32(1.0)
    return (np.asarray(frame, np.float32) - np.float32(low)) * scale


def _crops(x: np.ndarray) -> list[np.ndarray]:
    """Up to MAX_CROPS square crops of side min(CROP, the frame's even shorter side)."""
    n = min(CROP, min(x.shape) // 2 * 2)
    h, w = x.shape
    ys = np.unique(np.linspace(0, h - n, 2).astype(int))
    xs = np.unique(np.linspace(0, w - n, 2).astype(int))
    return [x[y : y + n, c : c + n] for y in ys for c in xs][:MAX_CROPS]


def power_profile(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(band centres in cycles/px, mean power per band) of ``x``'s crops (Hann-windowed)."""
    crops = _crops(x)
    n = crops[0].shape[0]
    win = np.outer(np.hanning(n), np.hanning(n)).astype(np.float32)
    power = np.zeros((n, n // 2 + 1), np.float64)
    for c in crops:
        c = c - c.mean()
        power += np.abs(np.fft.rfft2(c * win)) ** 2
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    radius = np.hypot(fy, fx)
    idx = np.digitize(radius.ravel(), BANDS) - 1
    ok = (idx >= 0) & (idx < len(BANDS) - 1)
    sums = np.bincount(idx[ok], weights=power.ravel()[ok], minlength=len(BANDS) - 1)
    counts = np.bincount(idx[ok], minlength=len(BANDS) - 1)
    centres = np.sqrt(BANDS[:-1] * BANDS[1:])
    return centres, sums / np.maximum(counts, 1) / len(crops)


def _band(centres: np.ndarray, power: np.ndarray, lo_hi: tuple[float, float]) -> float:
    sel = (centres >= lo_hi[0]) & (centres < lo_hi[1])
    return float(power[sel].mean()) if sel.any() else 0.0


@dataclass(frozen=True)
class InputStats:
    """What the input frame contributes (its unit-scale array kept for ``consistency``)."""

    level: float
    contrast: float
    spectrum: np.ndarray  # log10 relative power per band
    smoothed: np.ndarray  # the input on the unit scale, blurred by SMOOTH_PX, strided

    def scalars(self) -> dict[str, float]:
        return {"level": self.level, "contrast": self.contrast}


def input_stats(frame: np.ndarray, low: float, high: float) -> InputStats:
    x = to_unit(frame, low, high)
    level = float(np.median(x[::STRIDE, ::STRIDE]))
    contrast = float(np.percentile(x[::STRIDE, ::STRIDE], 99.5)) - level
    _, p = power_profile(x)
    spectrum = np.log10(np.maximum(p, 1e-30) / max(float(p.sum()), 1e-30))
    smoothed = gaussian_filter(x, SMOOTH_PX)[::STRIDE, ::STRIDE]
    return InputStats(level, contrast, spectrum.astype(np.float32), smoothed)


def output_stats(
    stats: InputStats, output: np.ndarray, low: float, high: float, sigma: float, scale: int = 1
) -> dict[str, float]:
    """``consistency`` and ``output_hf`` of ``output`` (the enhanced frame, raw units) given
    its input's ``stats``; ``sigma``: the LR-from-HR blur in output px; ``scale``: the
    model's upscaling (the output is brought back to the input grid after the blur)."""
    y = to_unit(output, low, high)
    centres, p = power_profile(y)
    mid, top = _band(centres, p, MID_BAND), _band(centres, p, HIGH_BAND)
    hf = float(np.log10(max(top, 1e-30) / max(mid, 1e-30)))
    blurred = gaussian_filter(y, float(np.hypot(sigma, SMOOTH_PX * scale)))
    back = blurred[:: STRIDE * scale, :: STRIDE * scale]
    x = stats.smoothed
    h, w = min(x.shape[0], back.shape[0]), min(x.shape[1], back.shape[1])
    return {"consistency": one_minus_r2(x[:h, :w], back[:h, :w]), "output_hf": hf}


def one_minus_r2(target: np.ndarray, pred: np.ndarray) -> float:
    """1 - R^2 of the least-squares line ``target ~ a * pred + b`` (0: explained exactly;
    1: not at all; a flat target gives 0)."""
    t = target.astype(np.float64).ravel()
    p = pred.astype(np.float64).ravel()
    t = t - t.mean()
    p = p - p.mean()
    tt, pp, tp = float(t @ t), float(p @ p), float(t @ p)
    if tt <= 0:
        return 0.0
    if pp <= 0:
        return 1.0
    return float(max(0.0, 1.0 - tp * tp / (tt * pp)))
