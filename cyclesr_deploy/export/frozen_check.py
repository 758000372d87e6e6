"""Per-model check of the crops statistics estimate, the record behind ``--stats auto``.

How closely frozen statistics estimated from crops (~20 % of a frame,
:func:`cyclesr_deploy.engines.frozen_torch.statistics_from_crops`) reproduce whole-frame inference
depends on the network, not only on the frame: on the trained reference CycleGAN 47-51 dB at
1024^2 and 2048^2, on a randomly initialised canonical generator ~40 dB, because there the
statistics error of every layer counts (``benchmarks/results/frozen_norm.md``). No cheap
estimate serves every network, so the choice is made per model, once, at export:
:func:`check_model` runs the crops estimate against whole-frame inference on a check frame
(by default synthetic 1024^2 and 2048^2 LR frames of :mod:`cyclesr_deploy.synthetic`, the two
crop layouts of the default estimate, or a frame of the user's own acquisition) and writes
``frozen_stats.json``
(:data:`~cyclesr_deploy.model.FROZEN_CHECK`): ``choice`` ``"crops"`` when the lowest
PSNR reaches :data:`~cyclesr_deploy.engines.frozen.CHECK_MIN_PSNR_DB` (45 dB + 2 dB margin for
frames other than the check frame), else ``"whole"`` (exact statistics; costs a whole-frame
pass, about half the tile pass, and its memory). The engines read it with
:func:`~cyclesr_deploy.engines.frozen.estimate_for_model`; the record names the SHA-256 of the
weights and graphs, so a folder whose files changed falls back to crops with a warning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.engines.frozen_stats import (
    CHECK_MIN_PSNR_DB,
    CHECK_SCHEMA,
    crops_for,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import FROZEN_CHECK, FROZEN_ONNX, WEIGHTS, ModelConfig, load_model

__all__ = ["CHECK_SEED", "CHECK_SIZES", "MAX_CHECK_COVER", "check_frames", "check_model"]

# the frame sizes of issue 6's acceptance: 1024^2 gets 2 crops of 384 px, 2048^2 (and every frame
# that default tiling sends through frozen statistics, all larger) 12+ crops of 256 px
CHECK_SIZES = (1024, 2048)
CHECK_SEED = 11  # synthetic ground truth not used by the benchmarks (seeds 1-3)
MAX_CHECK_COVER = 0.3  # a check frame whose crops would cover more of it checks nothing


def _as_model_units(model: ModelConfig, raw: np.ndarray, source: dict[str, Any]) -> np.ndarray:
    x = model.normalization.to_model(np.asarray(raw, dtype=np.float32))
    if not np.isfinite(x).all():
        raise InputError(f"check frame ({source['source']}): contains NaN or inf")
    m = model.size_multiple
    h, w = (-(-int(n) // m) * m for n in x.shape[-2:])  # as the tiler pads it
    crop, n = crops_for((h, w), m)
    cover = n * min(crop, h) * min(crop, w) / (h * w)
    if cover > MAX_CHECK_COVER:
        raise InputError(
            f"check frame ({source['source']}): {x.shape[0]} x {x.shape[1]} px is too small to "
            f"check the crops estimate (its {n} crop(s) of {crop} px would cover "
            f"{cover:.0%} of it, more than {MAX_CHECK_COVER:.0%}); use a frame of at least "
            "1024 x 1024 px"
        )
    c = model.generator.in_channels
    return np.ascontiguousarray(np.repeat(x[None], c, axis=0))


def check_frames(
    model: ModelConfig, path: str | Path | None = None, *, sizes: Sequence[int] = CHECK_SIZES
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """The check frames, validated, as ``(frame, description)`` pairs: frame in model units
    ((C, H, W) float32, the model's normalisation of domain A, the plane repeated over its
    input channels). ``path``: one 2-D plane of a TIFF of the user's LR acquisitions (at least
    ~1024 x 1024 px: InputError when the crops would cover more than :data:`MAX_CHECK_COVER`
    of it); else synthetic LR frames of ``sizes`` px
    (:func:`~cyclesr_deploy.synthetic.simulate_pair`, seed :data:`CHECK_SEED`)."""
    if path is not None:
        from cyclesr_deploy.images import read_image2d

        raw = read_image2d(path, "check frame").data
        source: dict[str, Any] = {"source": str(path), "shape": list(raw.shape)}
        return [(_as_model_units(model, raw, source), source)]
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    out = []
    for size in sizes:
        raw = simulate_pair(SynthConfig(size=size, seed=CHECK_SEED)).lr
        source = {"source": "synthetic LR", "seed": CHECK_SEED, "shape": list(raw.shape)}
        out.append((_as_model_units(model, raw, source), source))
    return out


def check_model(
    model_dir: str | Path,
    *,
    frame: str | Path | None = None,
    frames: Sequence[tuple[np.ndarray, dict[str, Any]]] | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Check the crops estimate of ``model_dir``'s deployed (A -> B) generator on the check
    frames (``frames`` from :func:`check_frames`, else :func:`check_frames` of ``frame``) and
    write the record to ``model_dir / frozen_stats.json`` (atomically; unless ``write`` is
    False). The record holds each frame's PSNR, their minimum ``psnr_db``, the ``choice`` (crops
    when the minimum reaches the threshold) and the sha256 of the files the estimate runs from
    (weights, statistics and tile graphs), which the runtime compares. Returns the record.
    InputError for a generator without InstanceNorm (nothing to estimate) or an unusable
    frame."""
    import torch

    from cyclesr_deploy.engines.frozen_torch import check_crops_estimate
    from cyclesr_deploy.export.onnx_export import load_generator, versions
    from cyclesr_deploy.export.report import utc_now
    from cyclesr_deploy.integrity import file_digest
    from cyclesr_deploy.io import atomic_path

    model_dir = Path(model_dir)
    model = load_model(model_dir)
    if model.generator.norm != "instance":
        raise InputError(
            f"{model_dir}: the generator has no InstanceNorm, frozen statistics do not apply"
        )
    if frames is None:
        frames = check_frames(model, frame)
    net = load_generator(model_dir, model, "ab")
    m = model.size_multiple
    start = time.perf_counter()
    checks = []
    for x, source in frames:
        result = check_crops_estimate(net, torch.from_numpy(x), size_multiple=m)
        h, w = (-(-int(n) // m) * m for n in x.shape[-2:])
        crop, n = crops_for((h, w), m)
        psnr = result["psnr_db"]
        checks.append(
            {
                "frame": source,
                "crop": crop,
                "n": n,
                "psnr_db": round(psnr, 3) if np.isfinite(psnr) else psnr,
                "max_abs": result["max_abs"],
                "seconds": {
                    "whole_frame": round(result["whole_frame_s"], 3),
                    "crops_statistics": round(result["crops_stats_s"], 3),
                },
            }
        )
    worst = min(c["psnr_db"] for c in checks)
    files = [WEIGHTS["ab"], FROZEN_ONNX["stats"], FROZEN_ONNX["tile"]]
    record: dict[str, Any] = {
        "schema_version": CHECK_SCHEMA,
        "choice": "crops" if worst >= CHECK_MIN_PSNR_DB else "whole",
        "psnr_db": worst,
        "min_psnr_db": CHECK_MIN_PSNR_DB,
        "checks": checks,
        "files": {f: file_digest(model_dir / f)[1] for f in files if (model_dir / f).is_file()},
        "seconds": round(time.perf_counter() - start, 3),
        "device": "cpu",
        "created": utc_now(),
        "versions": versions(),
        "note": (
            "crops estimate (calibrated, default crops) vs whole-frame inference: PSNR (range 2) "
            "of the frozen whole-frame pass with the crops statistics; --stats auto uses the "
            "crops when psnr_db (the minimum) reaches min_psnr_db, else whole-frame statistics "
            "(cyclesr_deploy.export.frozen_check)"
        ),
    }
    if write:
        with atomic_path(model_dir / FROZEN_CHECK) as part:
            part.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
