"""Write a synthetic unpaired training set and a paired test set as OME-TIFFs.

Layout (``stack=False``; one file per image, ``0000.tif``, ``0001.tif``, ...)::

    out_dir/
      trainA/   LR images (domain A), unpaired
      trainB/   HR images (domain B), from ground truths disjoint from trainA's
      testA/    LR of test sample i      } same ground truth,
      testB/    HR of test sample i      } paired by file name
      testGT/   noise-free ground truth of test sample i on the HR grid, float32
      dataset.json   full config, counts, PSF sigma (nm, px), gains, layout; no timestamps

With ``stack=True`` each split is one multi-page TYX file instead (``trainA.tif``, ...; a split is
then held in memory while it is generated). Every TIFF carries its pixel size in µm.

Seeding and disjointness: sample ``i`` of split ``k`` (0 = trainA, 1 = trainB, 2 = test pairs)
uses ``SeedSequence(config.seed, spawn_key=(k, i))``. Different spawn keys are independent
streams, so trainA and trainB never share a ground truth draw (and neither shares one with the
test set), while testA/testB/testGT of index ``i`` share one. Each image depends on its own key
only, so images can be generated in any order (or in parallel) with identical results; two runs
with the same config are byte-identical (fixed OME UUIDs, no timestamps).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy import __version__
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.images import write_tiff
from cyclesr_deploy.io import atomic_path, deterministic_uuid
from cyclesr_deploy.synthetic.config import SynthConfig, as_config
from cyclesr_deploy.synthetic.simulate import child, simulate_sample

SPLITS = ("trainA", "trainB", "testA", "testB", "testGT")
SPLIT_KEYS = {"trainA": 0, "trainB": 1, "test": 2}
MANIFEST = "dataset.json"
_OWN_FILE = re.compile(r"\d{4,}\.tif(\.part)?")

LAYOUT = {
    "trainA": "LR images (domain A), unpaired; ground truths from seed stream 0",
    "trainB": "HR images (domain B), unpaired; ground truths from seed stream 1 (disjoint from A)",
    "testA": "LR of test sample i (seed stream 2); paired with testB/testGT by index",
    "testB": "HR of test sample i (same ground truth as testA)",
    "testGT": "noise-free ground truth on the HR grid, float32, scaled so that blurring it with "
    "the HR PSF peaks at 1",
}


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`generate_dataset` wrote. ``manifest`` is the content of ``dataset.json``."""

    out_dir: Path
    n_train: int
    n_test: int
    stack: bool
    files: tuple[Path, ...]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def psf(self) -> dict[str, Any]:
        return self.manifest["psf"]


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty directory unless ``overwrite``; then remove only files this function
    writes (``dataset.json``, ``<split>.tif``, ``<split>/NNNN.tif``), leaving anything else."""
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(
                f"out_dir: {out} is not empty; refusing to write into it "
                "(choose an empty or new directory, or pass overwrite=True)"
            )
        for p in (out / MANIFEST, *(out / f"{s}.tif" for s in SPLITS)):
            p.unlink(missing_ok=True)
        for s in SPLITS:
            d = out / s
            if d.is_dir():
                for p in d.iterdir():
                    if p.is_file() and _OWN_FILE.fullmatch(p.name):
                        p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _pixel_um(cfg: SynthConfig, split: str) -> float:
    native_lr = split in ("trainA", "testA") and cfg.binning > 1 and cfg.lr_grid == "native"
    return (cfg.lr_pixel_nm if native_lr else cfg.hr_pixel_nm) * 1e-3


def _shape(cfg: SynthConfig, split: str) -> list[int]:
    n = cfg.size
    if split in ("trainA", "testA") and cfg.binning > 1 and cfg.lr_grid == "native":
        n //= cfg.binning
    return [n, n]


def _config_digest(cfg: SynthConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def _samples(cfg: SynthConfig, n_train: int, n_test: int) -> Iterator[tuple[str, int, np.ndarray]]:
    """(split, index, image) in generation order; each sample from its own SeedSequence."""
    root = np.random.SeedSequence(cfg.seed)
    for i in range(n_train):
        yield "trainA", i, simulate_sample(cfg, child(root, 0, i), gt=False, hr=False)["lr"]
    for i in range(n_train):
        yield "trainB", i, simulate_sample(cfg, child(root, 1, i), gt=False, lr=False)["hr"]
    for i in range(n_test):
        parts = simulate_sample(cfg, child(root, 2, i))
        yield "testA", i, parts["lr"]
        yield "testB", i, parts["hr"]
        yield "testGT", i, parts["gt"]


def _manifest(cfg: SynthConfig, counts: dict[str, int], stack: bool, width: int) -> dict[str, Any]:
    files = {
        s: (f"{s}.tif" if stack else f"{s}/{'#' * width}.tif") for s in SPLITS if counts[s] > 0
    }
    return {
        "format": "cyclesr-deploy synthetic confocal dataset",
        "schema_version": 1,
        "generator": {"package": "cyclesr-deploy", "version": __version__, "numpy": np.__version__},
        "config": cfg.model_dump(mode="json"),
        "config_sha256_16": _config_digest(cfg),
        "counts": counts,
        "stack": stack,
        "files": files,
        "layout": LAYOUT,
        "shape": {s: _shape(cfg, s) for s in SPLITS},
        "dtype": {s: ("float32" if s == "testGT" else f"uint{cfg.bit_depth}") for s in SPLITS},
        "pixel_size_um": {s: _pixel_um(cfg, s) for s in SPLITS},
        "psf": cfg.psf_summary(),
        "psf_note": (
            "nominal (the base config); with config.vary each sample draws its own LR optics, "
            "photons, background and structure mix from the ranges in config.vary"
            if cfg.vary is not None
            else "every sample"
        ),
        "gain_adu_per_photon": {"hr": cfg.gain("hr"), "lr": cfg.gain("lr")},
        "seeding": (
            "sample i of stream k uses numpy SeedSequence(config.seed, spawn_key=(k, i)), "
            "k: 0 = trainA, 1 = trainB, 2 = test pairs; its children (0, 1, 2) seed the ground "
            "truth, the HR noise and the LR noise"
        ),
        "noise_model": (
            "expected photons = photons * (signal / max(signal) + background) per HR-grid pixel, "
            "binned (b x b sum) for LR; Poisson + Gaussian read noise (e-); digital = "
            "clip(round(counts * gain)); LR resized to the HR grid by cubic spline "
            "(skimage resize order 3) when lr_grid='hr' and binning > 1"
        ),
    }


def generate_dataset(
    out_dir: str | os.PathLike[str],
    config: SynthConfig | dict | None = None,
    n_train: int = 64,
    n_test: int = 8,
    *,
    stack: bool = False,
    overwrite: bool = False,
) -> DatasetSummary:
    """Simulate and write ``n_train`` LR + ``n_train`` HR unpaired images and ``n_test`` paired
    test samples under ``out_dir`` (see the module docstring for the layout and seeding).

    Refuses a non-empty ``out_dir`` unless ``overwrite=True`` (then only files this function
    writes are replaced). Files are written atomically, ``dataset.json`` last.
    """
    cfg = as_config(config)
    n_train = _count(n_train, "n_train")
    n_test = _count(n_test, "n_test")
    out = Path(out_dir)
    _prepare(out, overwrite)
    counts = {
        "trainA": n_train,
        "trainB": n_train,
        "testA": n_test,
        "testB": n_test,
        "testGT": n_test,
    }
    width = max(4, len(str(max(n_train, n_test, 1) - 1)))
    digest = _config_digest(cfg)
    written: list[Path] = []
    stacks: dict[str, np.ndarray] = {}
    if not stack:
        for s in SPLITS:
            (out / s).mkdir(exist_ok=True)

    def flush(split: str) -> None:
        path = out / f"{split}.tif"
        write_tiff(
            path,
            stacks.pop(split),
            axes="TYX",
            pixel_size_um=_pixel_um(cfg, split),
            description={"split": split, "seed": cfg.seed, "config": digest},
            uid=deterministic_uuid("synthetic", digest, split),
        )
        written.append(path)

    for split, i, image in _samples(cfg, n_train, n_test):
        if stack:
            if split not in stacks:
                stacks[split] = np.empty((counts[split], *image.shape), image.dtype)
            stacks[split][i] = image
            if i == counts[split] - 1:
                flush(split)
            continue
        path = out / split / f"{i:0{width}d}.tif"
        write_tiff(
            path,
            image,
            pixel_size_um=_pixel_um(cfg, split),
            description={"split": split, "index": i, "seed": cfg.seed, "config": digest},
            uid=deterministic_uuid("synthetic", digest, split, i),
        )
        written.append(path)

    manifest = _manifest(cfg, counts, stack, width)
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    with atomic_path(out / MANIFEST) as part:
        part.write_bytes(text.encode("utf-8"))
    written.append(out / MANIFEST)
    return DatasetSummary(
        out_dir=out,
        n_train=n_train,
        n_test=n_test,
        stack=stack,
        files=tuple(written),
        manifest=manifest,
    )
