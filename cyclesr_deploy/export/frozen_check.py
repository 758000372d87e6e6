"""Per-model check of the crops statistics estimate, the record behind ``--stats auto``.

How closely frozen statistics estimated from crops (~20 % of a frame,
:func:`cyclesr_deploy.frozen_norm.statistics_from_crops`) reproduce whole-frame inference
depends on the network, not only on the frame: on the trained reference CycleGAN 47-51 dB at
1024^2 and 2048^2, on a randomly initialised canonical generator ~40 dB, because there the
statistics error of every layer counts (``benchmarks/results/frozen_norm.md``). No cheap
estimate serves every network, so the choice is made per model, once, at export:
:func:`check_model` runs the crops estimate against whole-frame inference on a check frame
(by default a synthetic 1024^2 LR frame of :mod:`cyclesr_deploy.synthetic`, or a frame of the
user's own acquisition) and writes ``frozen_stats.json``
(:data:`~cyclesr_deploy.engines.frozen.CHECK_FILE`): ``choice`` ``"crops"`` when the PSNR
reaches :data:`~cyclesr_deploy.engines.frozen.CHECK_MIN_PSNR_DB` (45 dB + 2 dB margin for
frames other than the check frame), else ``"whole"`` (exact statistics; costs a whole-frame
pass, about half the tile pass). The engines read it with
:func:`~cyclesr_deploy.engines.frozen.estimate_for_model`; the record names the weights'
SHA-256, so a folder whose weights changed falls back to crops with a warning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cyclesr_deploy.engines.frozen import (
    CHECK_FILE,
    CHECK_MIN_PSNR_DB,
    CHECK_SCHEMA,
    crops_for,
)
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.model import WEIGHTS, ModelConfig, load_model

__all__ = ["CHECK_SEED", "CHECK_SIZE", "check_frame", "check_model"]

CHECK_SIZE = 1024  # px: the smaller frame size of issue 6's acceptance (2 crops of 384 px)
CHECK_SEED = 11  # synthetic ground truth not used by the benchmarks (seeds 1-3)


def check_frame(
    model: ModelConfig, path: str | Path | None = None, *, size: int = CHECK_SIZE
) -> tuple[np.ndarray, dict[str, Any]]:
    """The check frame in model units ((C, H, W) float32, the model's normalisation of domain
    A, the single plane repeated over its input channels) and its description: ``path`` (one
    2-D plane of a TIFF of the user's LR acquisitions) or a synthetic LR frame of ``size`` px
    (:func:`~cyclesr_deploy.synthetic.simulate_pair`, seed :data:`CHECK_SEED`)."""
    if path is not None:
        from cyclesr_deploy.io import read_image2d

        raw = read_image2d(path, "check frame").data
        source: dict[str, Any] = {"source": str(path), "shape": list(raw.shape)}
    else:
        from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

        raw = simulate_pair(SynthConfig(size=size, seed=CHECK_SEED)).lr
        source = {"source": "synthetic LR", "seed": CHECK_SEED, "shape": list(raw.shape)}
    x = model.normalization.to_model(np.asarray(raw, dtype=np.float32))
    if not np.isfinite(x).all():
        raise InputError(f"check frame ({source['source']}): contains NaN or inf")
    c = model.generator.in_channels
    return np.ascontiguousarray(np.repeat(x[None], c, axis=0)), source


def check_model(
    model_dir: str | Path, *, frame: str | Path | None = None, write: bool = True
) -> dict[str, Any]:
    """Check the crops estimate of ``model_dir``'s deployed (A -> B) generator on the check
    frame (:func:`check_frame`) and write the record to ``model_dir / frozen_stats.json``
    (atomically; unless ``write`` is False). Returns the record. InputError for a generator
    without InstanceNorm (nothing to estimate) or an unusable frame."""
    import torch

    from cyclesr_deploy.export.onnx_export import load_generator, versions
    from cyclesr_deploy.export.report import file_digest, utc_now
    from cyclesr_deploy.frozen_norm import check_crops_estimate
    from cyclesr_deploy.io import atomic_path

    model_dir = Path(model_dir)
    model = load_model(model_dir)
    if model.generator.norm != "instance":
        raise InputError(
            f"{model_dir}: the generator has no InstanceNorm, frozen statistics do not apply"
        )
    x, source = check_frame(model, frame)
    m = model.size_multiple
    if min(x.shape[-2:]) < 2 * m:
        raise InputError(f"check frame {x.shape[-2:]} is too small for this model")
    net = load_generator(model_dir, model, "ab")
    start = time.perf_counter()
    result = check_crops_estimate(net, torch.from_numpy(x), size_multiple=m)
    crop, n = crops_for(x.shape, m)
    psnr = result["psnr_db"]
    choice = "crops" if psnr >= CHECK_MIN_PSNR_DB else "whole"
    weights = model_dir / WEIGHTS["ab"]
    record: dict[str, Any] = {
        "schema_version": CHECK_SCHEMA,
        "choice": choice,
        "min_psnr_db": CHECK_MIN_PSNR_DB,
        "crops": {
            "crop": crop,
            "n": n,
            "calibrated": True,
            "psnr_db": round(psnr, 3) if np.isfinite(psnr) else psnr,
            "max_abs": result["max_abs"],
        },
        "frame": source,
        "weights": {"path": weights.name, "sha256": file_digest(weights)[1]},
        "seconds": {
            "check": round(time.perf_counter() - start, 3),
            "whole_frame": round(result["whole_frame_s"], 3),
            "crops_statistics": round(result["crops_stats_s"], 3),
        },
        "device": "cpu",
        "created": utc_now(),
        "versions": versions(),
        "note": (
            "PSNR (range 2) of the frozen whole-frame pass with the crops statistics against "
            "whole-frame inference; --stats auto uses 'choice' "
            "(cyclesr_deploy.export.frozen_check)"
        ),
    }
    if write:
        with atomic_path(model_dir / CHECK_FILE) as part:
            part.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
