"""Cheap per-frame statistics the trust score is built from (pure numpy/scipy).

Both frames are first put on the model's own intensity scale (0..1 = the 0.1/99.9 % percentile
range the model was trained with: :class:`~cyclesr_deploy.normalization.IntensityMapping`), so
a frame is compared with the training domain as the model sees it. Every statistic is taken on
the same grid of crops of ``CROP`` px (a whole smaller frame is one crop) and pooled over them,
so its value does not depend on the frame's size (only its noise does). The crop count grows
with the frame's area (as many per axis as cover it, at most ``MAX_GRID`` = 5 per axis: 1 crop
at 256^2, 4 at 512^2, 16 at 1024^2, 25 from 1280^2 on), so a large frame is sampled by up to
25 crops at a cost bounded independently of its size. Frames whose shorter side is below
``MIN_SIDE`` are not scored (a handful of pixels says nothing): :func:`input_stats` returns
stats with ``scored`` False.

Statistics (which are scored, and on which side, is the calibration's rule: :data:`.score.SIDES`,
chosen on the development split of ``benchmarks/ood_trust.py`` with ``benchmarks/ood_rules.py``,
see benchmarks/README.md); every one is recorded with each frame:

* ``level``: the median of the input (its background on the model's scale): a sparser,
  dimmer, brighter or offset input than the training data;
* ``saturated``: the fraction of input pixels at the frame's maximum value (on the crops):
  saturated data, a constant frame (the minimum is left out: photon-starved frames are full of
  zeros that are not clipping);
* ``outside``: the fraction of input pixels outside ``RANGE`` on the model's scale (intensities
  the model never saw in training, where 0..1 holds 99.8 % of them: an offset, another gain);
* ``gain``: the slope a of the least-squares fit input ~ a * blur(output) + b (input smoothed
  by ``SMOOTH_PX``, output blurred by the calibration's LR-from-HR ``sigma``): above the
  in-domain slope, the output flattened the input's structure; below it, the output holds
  variance the input does not explain (invented structure);
* ``consistency``: 1 - R^2 of the same fit: the output's structure the input does not explain;
* ``transfer_low``, ``transfer_mid``, ``transfer_high``, ``transfer_top``: log10 of the output's
  over the input's power in the bands 0.02-0.04, 0.04-0.07, 0.07-0.15 and 0.15-0.3 cycles/px
  (the model's transfer function on this frame: the upper bands see texture painted where the
  input has little power);
* ``output_hf``: log10 of the output's high-band over mid-band power (invented fine texture).

Hand-written (one line why): no library computes these per-frame statistics; scipy does the
filtering and numpy the FFTs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

#: crops of this side (px, input grid) carry every statistic; up to MAX_GRID per axis
CROP = 256
MAX_GRID = 5
#: frames whose shorter side is below this are not scored
MIN_SIDE = 32
#: band edges (cycles/px): the transfer bands, then the mid and high bands of ``output_hf``
LOW_BAND, MID_BAND = (0.02, 0.04), (0.04, 0.07)
#: the upper transfer bands (cycles/px): ``transfer_high`` and ``transfer_top``
HIGH_BAND, TOP_BAND = (0.07, 0.15), (0.15, 0.3)
HF_MID, HF_HIGH = (0.06, 0.2), (0.25, 0.5)
SMOOTH_PX = 1.0
#: white noise's variance after the SMOOTH_PX Gaussian: sum of its squared weights, 1/(4 pi s^2)
SMOOTHED_NOISE = 1.0 / (4.0 * np.pi * SMOOTH_PX**2)
#: the model-scale intensities of ``outside``'s complement
RANGE = (-0.25, 1.25)
#: pixels left out at each crop edge in the consistency fit (blur borders), and its stride
EDGE = 8
STRIDE = 2


def to_unit(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """``frame`` on a model's intensity scale: ``low`` -> 0, ``high`` -> 1 (float32)."""
    scale = np.float32(1.0 / (high - low)) if high > low else np.float32(1.0)
    return (np.asarray(frame, np.float32) - np.float32(low)) * scale


def crop_corners(shape: tuple[int, ...], side: int) -> list[tuple[int, int]]:
    """Top-left corners of crops of ``side`` spread evenly over ``shape``: as many per axis as
    cover it, at most MAX_GRID (so up to MAX_GRID^2 crops, by the frame's area)."""
    h, w = int(shape[-2]), int(shape[-1])
    ys = np.unique(np.linspace(0, h - side, min(MAX_GRID, -(-h // side))).astype(int))
    xs = np.unique(np.linspace(0, w - side, min(MAX_GRID, -(-w // side))).astype(int))
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
    """What the input frame contributes: its ``level`` and ``saturated`` fraction, crop ``side``,
    band powers and the smoothed crops (for ``gain``/``consistency``); ``scored`` False for a
    frame too small to score (then nothing else is set)."""

    level: float
    side: int
    power: np.ndarray  # mean power in LOW_BAND, MID_BAND, HIGH_BAND, TOP_BAND
    smoothed: list[np.ndarray]  # the unit-scale crops blurred by SMOOTH_PX
    saturated: float = 0.0
    outside: float = 0.0
    scored: bool = True
    noise: float = 0.0  # pixel noise variance of the unit-scale input (neighbour differences)

    def scalars(self) -> dict[str, float]:
        return {"level": self.level, "saturated": self.saturated, "outside": self.outside}


def scorable(shape: tuple[int, ...]) -> bool:
    """Whether a frame of ``shape`` is large enough to score (both sides >= MIN_SIDE)."""
    return len(shape) >= 2 and min(int(shape[-2]), int(shape[-1])) >= MIN_SIDE


def input_stats(frame: np.ndarray, low: float, high: float) -> InputStats:
    """The input's statistics (on its crops; the frame itself is not kept)."""
    frame = np.asarray(frame)
    if not scorable(frame.shape):
        nan = float("nan")
        return InputStats(nan, 0, np.zeros(4), [], nan, nan, scored=False)
    side = crop_side(frame.shape)
    raw = np.stack(_crops(frame, side))[:, ::STRIDE, ::STRIDE]
    saturated = float(np.mean(raw == raw.max()))
    crops = [to_unit(c, low, high) for c in _crops(frame, side)]
    unit = np.stack(crops)[:, ::STRIDE, ::STRIDE]
    level = float(np.median(unit))
    outside = float(np.mean((unit < RANGE[0]) | (unit > RANGE[1])))
    power = band_power(crops, [LOW_BAND, MID_BAND, HIGH_BAND, TOP_BAND])
    smoothed = [gaussian_filter(c, SMOOTH_PX) for c in crops]
    return InputStats(level, side, power, smoothed, saturated, outside, noise=noise_variance(crops))


def noise_variance(crops: list[np.ndarray]) -> float:
    """Pixel noise variance of ``crops`` from horizontal neighbour differences (robust: 1.4826
    MAD; an LR image's structure barely changes from one pixel to the next, its noise does)."""
    d = np.concatenate([np.diff(c[::STRIDE], axis=1).ravel() for c in crops]).astype(np.float64)
    mad = float(np.median(np.abs(d - np.median(d))))
    if mad == 0.0:  # photon-starved or sparse: most neighbours equal; the plain variance then
        return float(np.var(d)) / 2.0
    return (1.4826 * mad) ** 2 / 2.0


def output_crops(
    stats: InputStats, output: np.ndarray, low: float, high: float, scale: int = 1
) -> list[np.ndarray]:
    """The crops of ``output`` (raw units) the statistics need, on the unit scale (copies: the
    output frame need not be kept)."""
    return [to_unit(c, low, high) for c in _crops(np.asarray(output), stats.side, scale)]


def output_stats(
    stats: InputStats, output: np.ndarray, low: float, high: float, sigma: float, scale: int = 1
) -> dict[str, float]:
    """``transfer_low``, ``transfer_mid``, ``gain``, ``consistency`` and ``output_hf`` of
    ``output`` (the enhanced frame, raw units) given its input's ``stats``; ``sigma``: the
    LR-from-HR blur in output px; ``scale``: the model's upscaling."""
    return crop_stats(stats, output_crops(stats, output, low, high, scale), sigma, scale)


def crop_stats(
    stats: InputStats, crops: list[np.ndarray], sigma: float, scale: int = 1
) -> dict[str, float]:
    """:func:`output_stats` of the output's crops (:func:`output_crops`)."""
    p = band_power(crops, [LOW_BAND, MID_BAND, HF_MID, HF_HIGH, HIGH_BAND, TOP_BAND], scale)
    values = {
        "transfer_low": _log_ratio(p[0], stats.power[0]),
        "transfer_mid": _log_ratio(p[1], stats.power[1]),
        "transfer_high": _log_ratio(p[4], stats.power[2]),
        "transfer_top": _log_ratio(p[5], stats.power[3]),
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
    t, b = np.concatenate(targets), np.concatenate(backs)
    gain, r2_loss = fit_line(t, b)
    values["gain"] = gain
    # the output's (blurred) structure the input does not predict, in the output's own units:
    # invented structure, also where the input is mostly noise (var_b * (1 - R^2))
    var_b = float(np.var(b, dtype=np.float64))
    values["invented"] = var_b * r2_loss if np.var(t) > 0 else var_b
    # what the output leaves unexplained beyond the input's own (smoothed) noise, as a fraction
    # of the input's structure: a noisy in-domain frame is not "inconsistent"
    var_t = float(np.var(t, dtype=np.float64))
    noise = stats.noise * SMOOTHED_NOISE
    values["consistency"] = (
        max(0.0, r2_loss * var_t - noise) / (var_t - noise) if var_t > noise else 0.0
    )
    values["unexplained"] = r2_loss
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
