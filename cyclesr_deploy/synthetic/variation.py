"""Draw one sample's own configuration from ``SynthConfig.vary`` (a :class:`Variation`).

The simulator draws it from child key 3 of the sample's SeedSequence (0-2 are the ground truth
and the two noise streams), so it depends on that sample's key only: data sets stay
order-independent and byte-reproducible. Without ``vary`` the configuration is returned unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from cyclesr_deploy.synthetic.config import SynthConfig, Variation

#: structure kinds that ``structure_off`` may switch off, and the density fields each scales
KINDS: dict[str, tuple[str, ...]] = {
    "filaments": ("filament_density",),
    "puncta": ("puncta_density",),
    "vesicles": ("vesicle_density",),
    "membrane": ("membrane_probability",),
    "nucleus": ("nucleus_probability",),
}
_PROBABILITIES = ("membrane_probability", "nucleus_probability")


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(lo_hi[0]), math.log(lo_hi[1]))))


def _structures(cfg: SynthConfig, v: Variation, rng: np.random.Generator) -> dict:
    s = cfg.structures.model_dump()
    off = rng.random(len(KINDS)) < v.structure_off
    if off.all():
        off[int(rng.integers(len(KINDS)))] = False
    for kind_off, fields in zip(off, KINDS.values(), strict=True):
        factor = 0.0 if kind_off else _uniform(rng, v.structure_scale)
        for name in fields:
            s[name] = s[name] * factor
            if name in _PROBABILITIES:
                s[name] = min(1.0, s[name])
    s["nucleus_fill"] = _uniform(rng, v.nucleus_fill)
    r0 = _uniform(rng, v.nucleus_radius_um)
    s["nucleus_radius_um"] = (r0, r0 * 1.5)
    lo = _uniform(rng, v.filament_brightness)
    s["filament_brightness"] = (lo, max(lo, min(1.0, lo + _uniform(rng, (0.1, 0.6)))))
    return s


def draw_config(cfg: SynthConfig, rng: np.random.Generator) -> SynthConfig:
    """The configuration of one sample, drawn with ``rng`` (``cfg`` itself when ``cfg.vary``
    is None). Only fields of :class:`Variation` change; the result has ``vary=None``."""
    v = cfg.vary
    if v is None:
        return cfg
    structures = _structures(cfg, v, rng)
    lr = cfg.lr.model_dump() | {
        "na": _uniform(rng, v.lr_na),
        "pinhole_au": _uniform(rng, v.lr_pinhole_au),
        "photons": _log_uniform(rng, v.lr_photons),
        "background": _uniform(rng, v.lr_background),
    }
    hr = cfg.hr.model_dump()
    if v.hr_photons is not None:
        hr["photons"] = _log_uniform(rng, v.hr_photons)
    fields = cfg.model_dump() | {"structures": structures, "lr": lr, "hr": hr, "vary": None}
    return SynthConfig.model_validate(fields)
