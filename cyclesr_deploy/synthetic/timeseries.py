"""A synthetic time-lapse acquisition: one field imaged ``n_frames`` times while the stage drifts
and the dye bleaches, in both modalities (what ``cyclesr demo`` enhances).

Frame ``t`` sees the ground truth shifted by ``t * drift_px`` (whole pixels, so the truth of every
frame is exact) and scaled by ``(1 - bleach_per_frame) ** t``; each frame gets its own photon and
read noise. Intensities use frame 0's PSF peaks, so bleaching shows as fewer photons (more
relative noise), as on a microscope.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cyclesr_deploy.errors import InputError
from cyclesr_deploy.synthetic.acquire import blur
from cyclesr_deploy.synthetic.config import SynthConfig, as_config
from cyclesr_deploy.synthetic.simulate import (
    RngOrSeed,
    _crop,
    _digitise,
    as_seed_sequence,
    child,
    margin_px,
)
from cyclesr_deploy.synthetic.structures import render_structures

_GT_KEY = 1000  # child key of the field's ground truth; frames use keys 0..n-1


class TimeSeries(NamedTuple):
    """``(T, Y, X)`` stacks: ``gt`` float32 (HR-peak units), ``lr`` and ``hr`` uint8/16."""

    gt: np.ndarray
    lr: np.ndarray
    hr: np.ndarray


def simulate_time_series(
    config: SynthConfig | dict | None = None,
    n_frames: int = 8,
    *,
    drift_px: tuple[int, int] = (2, 1),
    bleach_per_frame: float = 0.02,
    rng_or_seed: RngOrSeed = None,
) -> TimeSeries:
    """Simulate ``n_frames`` frames of one drifting, bleaching field (see the module doc).
    ``lr`` is on the HR grid (``lr_grid="hr"``); same seed, same arrays."""
    cfg = as_config(config)
    if n_frames < 1:
        raise InputError(f"n_frames: need >= 1, got {n_frames}")
    if not 0 <= bleach_per_frame < 1:
        raise InputError(f"bleach_per_frame: must be in [0, 1), got {bleach_per_frame}")
    if cfg.lr_grid != "hr":
        raise InputError("time series: lr_grid must be 'hr' (LR and HR on one grid)")
    dy, dx = (int(d) for d in drift_px)
    ss = as_seed_sequence(rng_or_seed, cfg.seed)
    m = margin_px(cfg)
    span = (n_frames - 1) * max(abs(dy), abs(dx))
    field = render_structures(
        cfg.structures,
        cfg.size + 2 * m + span,
        cfg.hr_pixel_nm,
        np.random.default_rng(child(ss, _GT_KEY)),
        oversample=cfg.oversample,
    )
    n = cfg.size + 2 * m
    y0 = 0 if dy >= 0 else span
    x0 = 0 if dx >= 0 else span
    peaks: dict[str, float] = {}
    gts, lrs, hrs = [], [], []
    for t in range(n_frames):
        window = field[y0 + t * dy : y0 + t * dy + n, x0 + t * dx : x0 + t * dx + n]
        bleach = (1.0 - bleach_per_frame) ** t
        frame: dict[str, np.ndarray] = {}
        for which in ("hr", "lr"):
            signal = _crop(blur(window, cfg.psf_sigma_px(which)), m)
            peak = peaks.setdefault(which, float(signal.max()) or 1.0)
            frame[which] = _digitise(cfg, signal / peak * bleach, which, child(ss, t))
        gts.append((_crop(window, m) / peaks["hr"] * bleach).astype(np.float32))
        lrs.append(frame["lr"])
        hrs.append(frame["hr"])
    return TimeSeries(np.stack(gts), np.stack(lrs), np.stack(hrs))
