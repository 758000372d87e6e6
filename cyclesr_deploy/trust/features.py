"""Cheap per-frame statistics the trust score is built from (pure numpy/scipy).

Both frames are first put on the model's own intensity scale (0..1 = the 0.1/99.9 % percentile
range the model was trained with: :class:`~cyclesr_deploy.normalization.IntensityMapping`), so
a frame is compared with the training domain as the model sees it. Every statistic is taken on
the same grid of up to 3 x 3 crops of ``CROP`` px (a whole smaller frame is one crop) and
pooled over them, so its value does not depend on the frame's size (only its noise does) and
its cost is fixed: ``begin`` and ``finish`` cost the same for a 512^2 and a 4096^2 frame.

What makes an output hurt, and the statistics that see it. Scored (:data:`.score.SIDES`,
chosen on the development split of ``benchmarks/ood_trust.py`` as the smallest set that
separated hurt from helped frames there, see benchmarks/README.md):

* an output that does not explain its input: ``gain``, the slope a of the least-squares fit
  input ~ a * blur(output) + b (input smoothed by ``SMOOTH_PX``, output blurred by the
  calibration's LR-from-HR ``sigma``); a above the in-domain outputs' slope: the output holds
  less of the input's structure than in-domain outputs do (lost or flattened structure, e.g.
  texture painted over smooth objects);
* an input sparser or dimmer than the training data: ``level``, the median of the input (its
  background on the model's scale) below the training data's: sparse content (a few beads or
  nuclei on an empty field, where the model paints its HR noise texture over an empty
  background), another bit depth or offset.

Recorded with each frame, not scored (on the development split they flagged frames the model
helped as often as frames it hurt, or added nothing to the two above): ``transfer_low`` and
``transfer_mid``, log10 of the output's over the input's power in the bands 0.02-0.04 and
0.04-0.07 cycles/px (the model's own transfer function on this frame); ``consistency``
(1 - R^2 of the fit above); ``output_hf`` (log10 of the output's high-band over mid-band power:
invented fine texture).

Hand-written (one line why): no library computes these per-frame statistics; scipy does the
filtering and numpy the FFTs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

#: crops of this side (px, input grid) carry every statistic; up to GRID x GRID of them
CROP = 256
GRID = 3
#: band edges (cycles/px): the transfer bands, then the mid and high bands of ``output_hf``
LOW_BAND, MID_BAND = (0.02, 0.04), (0.04, 0.07)
HF_MID, HF_HIGH = (0.06, 0.2), (0.25, 0.5)
SMOOTH_PX = 1.0
#: pixels left out at each crop edge in the consistency fit (blur borders), and its stride
EDGE = 8
STRIDE = 2


def to_unit(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """``frame`` on a model's intensity scale: ``low`` -> 0, ``high`` -> 1 (float32)."""
    scale = np.float32(1.0 / (high - low)) if high > low else np.float32(1.0)
    return (np.asarray(frame, np.float32) - np.float32(low)) * scale


def crop_corners(shape: tuple[int, ...], side: int) -> list[tuple[int, int]]:
    """Top-left corners of up to GRID x GRID crops of ``side`` spread over ``shape`` (as many
    per axis as cover it, at most GRID)."""
    h, w = int(shape[-2]), int(shape[-1])
    ys = np.unique(np.linspace(0, h - side, min(GRID, -(-h // side))).astype(int))
    xs = np.unique(np.linspace(0, w - side, min(GRID, -(-w // side))).astype(int))
    return [(int(y), int(x)) for y in ys for x in xs]


def crop_side(shape: tuple[int, ...]) -> int:
    """The crop side of a frame of ``shape``: CROP, or its even shorter side when smaller."""
    return max(2, min(CROP, min(int(shape[-2]), int(shape[-1])) // 2 * 2))


def _crops(x: np.ndarray, side: int, scale: int = 1) -> list[np.ndarray]:
    """The crops of ``x`` (an output of a x``scale`` model: the same field, ``scale`` x)."""
    s = side * scale
    corners = crop_corners((x.shape[0] // scale, x.shape[1] // scale), side)
    return [x[y * scale : y * scale + s, c * scale : c * scale + s] for y, c in corners]


def band_power(
    crops: list[np.ndarray], bands: list[tuple[float, float]], scale: int = 1
) -> np.ndarray:
    """Mean power per pixel of ``crops`` (Hann-windowed, mean removed) in each band of
    ``bands`` (cycles per *input* px: a x``scale`` output's frequencies are divided by it)."""
    n = crops[0].shape[0]
    win = np.outer(np.hanning(n), np.hanning(n)).astype(np.float32)
    power = np.zeros((n, n // 2 + 1), np.float64)
    for c in crops:
        power += np.abs(np.fft.rfft2((c - c.mean()) * win)) ** 2
    radius = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]) * scale
    out = np.empty(len(bands))
    for i, (lo, hi) in enumerate(bands):
        sel = (radius >= lo) & (radius < hi)
        out[i] = power[sel].mean() / (n * n * len(crops)) if sel.any() else 0.0
    return out


def _log_ratio(a: float, b: float) -> float:
    return float(np.log10(max(a, 1e-30) / max(b, 1e-30)))


@dataclass(frozen=True)
class InputStats:
    """What the input frame contributes: its ``level``, crop ``side``, band powers and the
    smoothed crops (for ``gain``/``consistency``)."""

    level: float
    side: int
    power: np.ndarray  # mean power in LOW_BAND, MID_BAND
    smoothed: list[np.ndarray]  # the unit-scale crops blurred by SMOOTH_PX

    def scalars(self) -> dict[str, float]:
        return {"level": self.level}


def input_stats(frame: np.ndarray, low: float, high: float) -> InputStats:
    """The input's statistics (on its crops; the frame itself is not kept)."""
    side = crop_side(frame.shape)
    crops = [to_unit(c, low, high) for c in _crops(np.asarray(frame), side)]
    level = float(np.median(np.stack(crops)[:, ::STRIDE, ::STRIDE]))
    power = band_power(crops, [LOW_BAND, MID_BAND])
    smoothed = [gaussian_filter(c, SMOOTH_PX) for c in crops]
    return InputStats(level, side, power, smoothed)


def output_stats(
    stats: InputStats, output: np.ndarray, low: float, high: float, sigma: float, scale: int = 1
) -> dict[str, float]:
    """``transfer_low``, ``transfer_mid``, ``gain``, ``consistency`` and ``output_hf`` of
    ``output`` (the enhanced frame, raw units) given its input's ``stats``; ``sigma``: the
    LR-from-HR blur in output px; ``scale``: the model's upscaling."""
    crops = [to_unit(c, low, high) for c in _crops(np.asarray(output), stats.side, scale)]
    p = band_power(crops, [LOW_BAND, MID_BAND, HF_MID, HF_HIGH], scale)
    values = {
        "transfer_low": _log_ratio(p[0], stats.power[0]),
        "transfer_mid": _log_ratio(p[1], stats.power[1]),
        "output_hf": _log_ratio(p[3], p[2]),
    }
    blur = float(np.hypot(sigma, SMOOTH_PX * scale))
    e, st = EDGE, STRIDE
    backs, targets = [], []
    for c, x in zip(crops, stats.smoothed, strict=True):
        back = gaussian_filter(c, blur)[::scale, ::scale]
        h, w = min(x.shape[0], back.shape[0]), min(x.shape[1], back.shape[1])
        inner = (slice(e, max(e + 1, h - e), st), slice(e, max(e + 1, w - e), st))
        backs.append(back[:h, :w][inner].ravel())
        targets.append(x[:h, :w][inner].ravel())
    gain, r2_loss = fit_line(np.concatenate(targets), np.concatenate(backs))
    values["gain"] = gain
    values["consistency"] = r2_loss
    return values


def fit_line(target: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(slope a, 1 - R^2) of the least-squares line ``target ~ a * pred + b`` (1 - R^2: 0 =
    explained exactly, 1 = not at all; a flat target gives (0, 0), a flat ``pred`` (0, 1))."""
    t = target.astype(np.float64).ravel()
    q = pred.astype(np.float64).ravel()
    t = t - t.mean()
    q = q - q.mean()
    tt, qq, tq = float(t @ t), float(q @ q), float(t @ q)
    if tt <= 0:
        return 0.0, 0.0
    if qq <= 0:
        return 0.0, 1.0
    return tq / qq, float(max(0.0, 1.0 - tq * tq / (tt * qq)))
