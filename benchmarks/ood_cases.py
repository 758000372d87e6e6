"""The frames of the out-of-domain trust benchmark (``ood_trust.py``): each with a truth.

Kinds (``KINDS``), each a group:

* ``in-domain``: held-out frames of the model's training recipe (``--recipe-json``; default the
  ``cyclesr synth`` defaults of the current ``reference-cyclegan``), fresh seeds;
* ``structure``: structures absent or rare in training (the recipe with one structure type
  only): ``nuclei`` (large filled nuclei), ``blobs`` (dense large vesicles), ``beads`` (sparse
  bright puncta), ``dense`` (15x the filament density);
* ``optics``: the recipe with other LR optics: ``psf-narrow`` (LR NA 1.2: almost HR
  already), ``psf-wide`` (LR NA 0.5), ``photons-low`` (8 photons), ``photons-high`` (3000),
  ``background-high`` (2x the peak), ``background-zero``;
* ``bit-depth``: ``8-bit`` (the recipe written as 8-bit data);
* ``real``: images that scikit-image ships (offline), degraded into LR by :func:`degrade`
  (this benchmark's own blur + background + Poisson model, not the simulator's):
  ``cell``, ``coins``, ``hubble``, ``ihc-h`` and ``ihc-dab`` (hematoxylin and DAB channels of
  ``immunohistochemistry()``), ``grass``, ``gravel``, ``brick``, ``camera``. The two splits
  never share pixels: ``dev`` crops come from the first half of each image (along its longer
  axis), ``report`` crops from the second half (``ihc-h`` and ``ihc-dab`` are channels of one
  image, so they share tissue within a split, never across). Real kinds use the simulator's
  *default* LR optics whatever the recipe says (their degradation is this module's own).

Truth: the noise-free HR image, i.e. the ground truth blurred by the HR PSF (synthetic kinds:
the simulator's ``gt`` blurred by its HR PSF sigma; real kinds: the image blurred by the same
sigma, 1.5 px for the default optics). Everything is reproducible from the seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cyclesr_deploy.trust.calibrate import CALIBRATION_SEED, synthetic_sample
from cyclesr_deploy.trust.evaluate import degrade

#: seeds never used here: the reference models' training/validation/test data (101-104, 201, 203)
TRAINING_SEEDS = frozenset({101, 102, 103, 104, 201, 203})
#: seed bases of the development and report splits: fresh, disjoint from the calibration
#: frames' (``trust.calibrate.synthetic_frames``: CALIBRATION_SEED + 0..n-1)
SEED_BASE = {"dev": 72_000, "report": 75_000}  # + 100 per kind + frame
assert min(SEED_BASE.values()) >= CALIBRATION_SEED + 1000
#: a frame whose truth is empty (a structure kind that drew nothing in the field) is redrawn
#: with seed + RETRY_STEP, up to MAX_TRIES times
RETRY_STEP, MAX_TRIES = 100_000, 20


@dataclass(frozen=True)
class Case:
    """One benchmark frame: ``lr`` (what the model gets) and ``truth`` (float, same grid)."""

    kind: str
    group: str
    split: str
    seed: int
    lr: np.ndarray
    truth: np.ndarray

    @property
    def size(self) -> str:
        return f"{self.lr.shape[0]}x{self.lr.shape[1]}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def synthetic(recipe: dict[str, Any], seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(lr, truth) of one simulated sample of ``recipe`` (a SynthConfig mapping)."""
    lr, truth = synthetic_sample(recipe, seed, size, truth=True)
    assert truth is not None
    return lr, truth


ONLY = {  # structure kinds: every other structure switched off (variation too)
    "nuclei": {
        "filament_density": 0,
        "puncta_density": 0,
        "vesicle_density": 0,
        "membrane_probability": 0,
        "nucleus_probability": 1,
        "nucleus_radius_um": (1.5, 3.0),
        "nucleus_fill": 1.0,
    },
    "blobs": {
        "filament_density": 0,
        "puncta_density": 0,
        "vesicle_density": 2.0,
        "vesicle_radius_nm": (150.0, 600.0),
        "membrane_probability": 0,
        "nucleus_probability": 0,
    },
    "beads": {
        "filament_density": 0,
        "puncta_density": 0.08,
        "punctum_brightness": (0.5, 1.0),
        "vesicle_density": 0,
        "membrane_probability": 0,
        "nucleus_probability": 0,
    },
    "dense": {"filament_density": 3.0, "nucleus_probability": 0, "membrane_probability": 0},
}
OPTICS = {
    "psf-narrow": {"lr": {"na": 1.2, "pinhole_au": 0.7}},
    "psf-wide": {"lr": {"na": 0.5}},
    "photons-low": {"lr": {"photons": 8.0}},
    "photons-high": {"lr": {"photons": 3000.0}},
    "background-high": {"lr": {"background": 2.0}},
    "background-zero": {"lr": {"background": 0.0}},
}


def _structure_recipe(recipe: dict[str, Any], kind: str) -> dict[str, Any]:
    out = _merge(recipe, {"structures": ONLY[kind]})
    out.pop("vary", None)
    return out


def _optics_recipe(recipe: dict[str, Any], kind: str) -> dict[str, Any]:
    out = _merge(recipe, OPTICS[kind])
    if out.get("vary"):  # the recipe's own LR variation would undo the kind's optics
        out["vary"] = None
    return out


# --- real images --------------------------------------------------------------------------------
def _grey(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(rgb[..., :3])


def _ihc(channel: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data
        from skimage.color import rgb2hed

        return rgb2hed(data.immunohistochemistry())[..., channel]

    return load


def _skimage(name: str, rgb: bool = False) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        im = getattr(data, name)()
        return _grey(im) if rgb else im

    return load


REAL: dict[str, Callable[[], np.ndarray]] = {
    "cell": _skimage("cell"),
    "coins": _skimage("coins"),
    "hubble": _skimage("hubble_deep_field", rgb=True),
    "ihc-h": _ihc(0),
    "ihc-dab": _ihc(2),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "brick": _skimage("brick"),
    "camera": _skimage("camera"),
}


def half(image: np.ndarray, split: str) -> np.ndarray:
    """The half of ``image`` (along its longer axis) a split draws its crops from: the first
    for ``dev``, the second for ``report`` (the splits never share pixels)."""
    axis = 0 if image.shape[0] >= image.shape[1] else 1
    n = image.shape[axis] // 2
    part = slice(0, n) if split == "dev" else slice(n, None)
    return image[part] if axis == 0 else image[:, part]


def _crop(image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    side = min(side, h // 4 * 4, w // 4 * 4)
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    return image[y : y + side, x : x + side]


# --- the kinds ----------------------------------------------------------------------------------
KINDS: dict[str, str] = {
    "in-domain": "in-domain",
    **dict.fromkeys(ONLY, "structure"),
    **dict.fromkeys(OPTICS, "optics"),
    "8-bit": "bit-depth",
    **dict.fromkeys(REAL, "real"),
}
#: kinds absent from the development split (statistics were chosen without them)
HELD_OUT = ("blobs", "psf-wide", "background-zero", "hubble", "gravel", "ihc-dab")
SYNTH_SIZES = (256, 512, 1024)
REAL_SIZES = (256, 384, 512)


def make(
    kind: str, recipe: dict[str, Any], seed: int, size: int, split: str = "report"
) -> tuple[int, np.ndarray, np.ndarray]:
    """(seed used, lr, truth) of one frame of ``kind`` (a real kind: from ``split``'s half of
    its image): ``seed``, or the first retry whose truth is not empty."""
    for i in range(MAX_TRIES):
        s = seed + i * RETRY_STEP
        lr, truth = _make(kind, recipe, s, size, split)
        if np.ptp(truth) > 1e-3 * max(float(np.abs(truth).max()), 1e-12) and np.ptp(truth) > 0:
            return s, lr, truth
    raise RuntimeError(f"{kind}: no frame with content in {MAX_TRIES} seeds from {seed}")


def _make(
    kind: str, recipe: dict[str, Any], seed: int, size: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
    group = KINDS[kind]
    if group == "in-domain":
        return synthetic(recipe, seed, size)
    if group == "structure":
        return synthetic(_structure_recipe(recipe, kind), seed, size)
    if group == "optics":
        return synthetic(_optics_recipe(recipe, kind), seed, size)
    if kind == "8-bit":
        return synthetic(_merge(recipe, {"bit_depth": 8}), seed, size)
    rng = np.random.default_rng(seed)
    image = _crop(half(REAL[kind](), split), size, rng)
    photons = float(np.exp(rng.uniform(np.log(20), np.log(150))))
    return degrade(image, rng, photons=photons, background=float(rng.uniform(0.05, 0.6)))


def cases(recipe: dict[str, Any], split: str, per_kind: int, n_in_domain: int) -> Iterator[Case]:
    """The frames of ``split`` (``dev``: without :data:`HELD_OUT`; ``report``: every kind),
    sizes cycling through the kind's sizes."""
    base = SEED_BASE[split]
    for k_index, (kind, group) in enumerate(KINDS.items()):
        if split == "dev" and kind in HELD_OUT:
            continue
        n = n_in_domain if group == "in-domain" else per_kind
        sizes = REAL_SIZES if group == "real" else SYNTH_SIZES
        for i in range(n):
            size = sizes[i % len(sizes)]
            seed, lr, truth = make(kind, recipe, base + 100 * k_index + i, size, split)
            assert seed not in TRAINING_SEEDS
            yield Case(kind, group, split, seed, lr, truth)
