"""Simulate one ground truth and its LR/HR acquisitions.

Seeding: every sample has its own ``numpy.random.SeedSequence``; its children (built directly from
the spawn key, so order does not matter and nothing is mutated) are 0 = ground truth,
1 = HR noise, 2 = LR noise. The ground truth is rendered on the HR grid plus a margin of
``4·sigma_LR + 2`` px on each side (structures outside the field blur into it, as in a real
acquisition) and cropped after blurring.

Normalisation: each modality's noise-free blurred image is divided by its own maximum, so the
brightest pixel receives ``photons`` expected signal photons (as when an operator sets the gain
on the brightest structure). The returned ground truth is scaled by the *HR* maximum, so
``blur(gt, sigma_HR)`` peaks at 1: it is the expected HR signal in units of the HR peak.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic.acquire import (
    add_noise,
    blur,
    expected_photons,
    quantise,
    to_hr_grid,
)
from cyclesr_deploy.synthetic.config import SynthConfig, Which, as_config
from cyclesr_deploy.synthetic.structures import render_structures
from cyclesr_deploy.synthetic.variation import draw_config

RngOrSeed = int | np.random.SeedSequence | np.random.Generator | None

_GT, _HR, _LR, _VARY = 0, 1, 2, 3  # child keys of a sample's SeedSequence


class SimulatedPair(NamedTuple):
    """``gt`` float32 on the HR grid (blur(gt, sigma_HR) peaks at 1); ``lr`` and ``hr`` uint8/16."""

    gt: np.ndarray
    lr: np.ndarray
    hr: np.ndarray


def child(ss: np.random.SeedSequence, *keys: int) -> np.random.SeedSequence:
    """The SeedSequence ``ss.spawn`` would give for ``keys``, without mutating ``ss``."""
    return np.random.SeedSequence(
        ss.entropy, spawn_key=(*ss.spawn_key, *keys), pool_size=ss.pool_size
    )


def as_seed_sequence(rng_or_seed: RngOrSeed, default: int) -> np.random.SeedSequence:
    """An int or SeedSequence is used as is (``None`` means ``default``); a Generator is advanced
    to draw fresh entropy, so repeated calls give different samples."""
    if rng_or_seed is None:
        return np.random.SeedSequence(default)
    if isinstance(rng_or_seed, np.random.SeedSequence):
        return rng_or_seed
    if isinstance(rng_or_seed, np.random.Generator):
        return np.random.SeedSequence(rng_or_seed.integers(0, 2**32, size=4, dtype=np.uint64))
    if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool):
        if rng_or_seed < 0:
            raise InputError(f"seed: must be >= 0, got {rng_or_seed}")
        return np.random.SeedSequence(int(rng_or_seed))
    raise InputError(
        "rng_or_seed: expected an int, numpy SeedSequence or Generator, "
        f"got {type(rng_or_seed).__name__}"
    )


def margin_px(cfg: SynthConfig) -> int:
    """Margin (HR px) rendered on each side: 4 sigma of the larger PSF + 2, rounded up to a
    multiple of binning."""
    m = math.ceil(4 * max(cfg.psf_sigma_px("hr"), cfg.psf_sigma_px("lr"))) + 2
    return -(-m // cfg.binning) * cfg.binning


def render_ground_truth(cfg: SynthConfig, ss: np.random.SeedSequence) -> np.ndarray:
    """The sample's ground truth on the HR grid *with* margin (float32, dye per pixel)."""
    n = cfg.size + 2 * margin_px(cfg)
    rng = np.random.default_rng(child(ss, _GT))
    return render_structures(cfg.structures, n, cfg.hr_pixel_nm, rng, oversample=cfg.oversample)


def _crop(image: np.ndarray, m: int) -> np.ndarray:
    return image[m:-m, m:-m] if m else image


def _signal(cfg: SynthConfig, gt_padded: np.ndarray, which: Which) -> tuple[np.ndarray, float]:
    """Blurred, cropped signal of modality ``which`` divided by its maximum; and that maximum."""
    sig = _crop(blur(gt_padded, cfg.psf_sigma_px(which)), margin_px(cfg))
    peak = float(sig.max())
    return (sig / peak if peak > 0 else sig), peak


def acquire(
    cfg: SynthConfig, gt_padded: np.ndarray, which: Which, ss: np.random.SeedSequence
) -> np.ndarray:
    """Digital image of modality ``which`` (uint8/16) from a padded ground truth."""
    signal, _ = _signal(cfg, gt_padded, which)
    return _digitise(cfg, signal, which, ss)


def _digitise(
    cfg: SynthConfig, signal: np.ndarray, which: Which, ss: np.random.SeedSequence
) -> np.ndarray:
    m = cfg.modality(which)
    b = cfg.binning if which == "lr" else 1
    rng = np.random.default_rng(child(ss, _HR if which == "hr" else _LR))
    counts = add_noise(expected_photons(signal, m, b), m.read_noise, rng)
    image = quantise(counts, cfg.gain(which), cfg.bit_depth)
    if b > 1 and cfg.lr_grid == "hr":
        image = to_hr_grid(image, (cfg.size, cfg.size))
    return image


def simulate_sample(
    cfg: SynthConfig,
    ss: np.random.SeedSequence,
    *,
    gt: bool = True,
    lr: bool = True,
    hr: bool = True,
) -> dict[str, np.ndarray]:
    """The requested parts of one sample (keys ``gt``, ``lr``, ``hr``); skipped parts are not
    computed. With ``cfg.vary`` the sample first draws its own configuration
    (:func:`~cyclesr_deploy.synthetic.variation.draw_config`)."""
    if cfg.vary is not None:
        cfg = draw_config(cfg, np.random.default_rng(child(ss, _VARY)))
    gt_padded = render_ground_truth(cfg, ss)
    out: dict[str, np.ndarray] = {}
    if hr or gt:
        hr_signal, hr_peak = _signal(cfg, gt_padded, "hr")
        if gt:
            g = _crop(gt_padded, margin_px(cfg))
            out["gt"] = (g / hr_peak if hr_peak > 0 else g).astype(np.float32)
        if hr:
            out["hr"] = _digitise(cfg, hr_signal, "hr", ss)
    if lr:
        out["lr"] = acquire(cfg, gt_padded, "lr", ss)
    return out


def simulate_pair(
    config: SynthConfig | dict | None = None, rng_or_seed: RngOrSeed = None
) -> SimulatedPair:
    """Simulate a paired sample ``(gt, lr, hr)`` from one random ground truth.

    ``rng_or_seed``: int, SeedSequence or Generator; ``None`` uses ``config.seed``. ``lr`` is on
    the HR grid unless ``config.lr_grid == "native"`` and ``binning > 1``.
    """
    cfg = as_config(config)
    parts = simulate_sample(cfg, as_seed_sequence(rng_or_seed, cfg.seed))
    return SimulatedPair(gt=parts["gt"], lr=parts["lr"], hr=parts["hr"])
