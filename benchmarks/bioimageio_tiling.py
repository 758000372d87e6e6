"""How far bioimageio.core's prediction of a `cyclesr export bioimageio` package is from
`cyclesr enhance` (what deepImageJ / ilastik / bioimageio.core users get).

For each frame: ours = the project's runtime (Enhancer, ONNX Runtime CPU, default settings: the
frame runs whole); theirs = bioimageio.core's prediction pipeline on the package's ONNX weights
(CPU), (a) without blocking (the whole image, which bioimageio.core pads by the halo,
symmetric), (b) blockwise with its default blocksize parameter (n = 10), (c) blockwise with
n = 64 (larger blocks). PSNR(theirs, ours) in dB with the model's output range as peak
(high_b - low_b, the generator's range 2), over the whole frame and over its interior (the
frame less a border of one halo), and the maximum absolute difference.

Frames: a synthetic 1024^2 LR frame (`cyclesr_deploy.synthetic`, seed 1) and scikit-image's
`data.cell()` (660 x 550, a real microscope image, not confocal fluorescence: out of the
model's domain; cropped to 660 x 548 and mapped linearly onto the model's LR percentile range).

    python benchmarks/bioimageio_tiling.py [--out benchmarks/results/bioimageio_tiling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

MODEL = "reference-cyclegan"
BLOCK_PARAMETERS = (10, 64)  # bioimageio.core's default n, and larger blocks


def frames(model) -> dict[str, np.ndarray]:
    from skimage import data

    from cyclesr_deploy.normalization import stretch_to_range
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    n = model.normalization
    cell = data.cell().astype(np.float32)[:, :548]
    cell = stretch_to_range(cell, n.low_a, n.high_a, n.pmin, n.pmax)
    return {
        "synthetic LR 1024x1024 (seed 1)": simulate_pair(SynthConfig(size=1024, seed=1)).lr,
        "skimage data.cell() 660x548": cell,
    }


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/bioimageio_tiling.json")
    )
    args = parser.parse_args()

    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.spec import load_description

    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.export.bioimageio import export_bioimageio
    from cyclesr_deploy.model import load_model
    from cyclesr_deploy.runtime.enhancer import Enhancer

    model = load_model(resolve_model(MODEL))
    peak = model.normalization.high_b - model.normalization.low_b
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        package = export_bioimageio(MODEL, Path(tmp) / "package.zip")
        descr = load_description(package.path)
        pipeline = create_prediction_pipeline(descr, weight_format="onnx", devices=["cpu"])
        with Enhancer(MODEL, backend="onnxruntime") as enhancer, pipeline:
            for name, frame in frames(model).items():
                frame = np.asarray(frame, np.float32)
                t0 = time.perf_counter()
                ours = enhancer(frame)
                row = {"frame": name, "shape": list(frame.shape)}
                row["ours_s"] = time.perf_counter() - t0
                sample = create_sample_for_model(descr, inputs={"lr": frame[None, None]})
                runs = {"whole (padded by the halo)": None}
                runs.update({f"blocks n={n}": n for n in BLOCK_PARAMETERS})
                for label, n in runs.items():
                    t0 = time.perf_counter()
                    if n is None:
                        out = pipeline.predict_sample_without_blocking(sample)
                    else:
                        out = pipeline.predict_sample_with_blocking(sample, ns=n)
                    theirs = out.members["hr"].data.values[0, 0]
                    size = descr.inputs[0].axes[2].size.get_size(n) if n is not None else None
                    h = package.halo  # the interior: away from the image border by the halo
                    row[label] = {
                        "psnr_db": round(psnr(theirs, ours, peak), 2),
                        "psnr_interior_db": round(
                            psnr(theirs[h:-h, h:-h], ours[h:-h, h:-h], peak), 2
                        ),
                        "max_abs": float(np.abs(theirs - ours).max()),
                        "max_abs_of_range": float(np.abs(theirs - ours).max() / peak),
                        "input_block_px": size,
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                    print(name, label, row[label], flush=True)
                rows.append(row)
    result = {
        "what": "PSNR(bioimageio.core prediction, cyclesr enhance output), peak = output range",
        "model": MODEL,
        "halo_px": package.halo,
        "rows": rows,
        "machine": machine(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
