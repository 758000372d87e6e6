"""Frozen (frame-level) InstanceNorm statistics vs naive per-tile instance norm: quality and cost.

    python benchmarks/frozen_norm.py [--sizes 1024 2048] [--tile 512] [--repeats 3] [--out FILE]

A **random-weight** canonical-architecture generator at reduced size (ngf 16, 6 blocks, RF 121 px,
N(0, 0.02) init; not the deployed ngf-64 9-block network, to keep CPU time reasonable) runs on a
synthetic LR frame (``simulate_pair``) mapped to model units with a ``NormalizationConfig`` whose
low/high are the frame's 0.1/99.9 percentiles. Per frame size:

* reference: whole-frame inference (per-frame instance norm);
* PSNR(tiled, whole) in dB (range 2) and max abs error for naive tiling (per-tile instance norm)
  and for frozen statistics from the whole frame, from CROPxN crops (``--crops``, spread over
  the frame on a grid) and from a thumbnail downsampled by each of ``--factors``;
  tiling = ``TilingConfig.for_model(RF, tile)`` (cosine blend);
* seconds of each statistics pass and of the frozen tile pass (medians of ``repeats`` runs after
  one warm-up), and their ratio.

A size whose whole-frame reference pass takes longer than ``--max-whole-s`` is skipped (reported).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine

from cyclesr_deploy.frozen_norm import compute_statistics, predict_tiled_frozen, set_mode
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.nets import build_generator
from cyclesr_deploy.synthetic import SynthConfig, simulate_pair
from cyclesr_deploy.tiling import TilingConfig


def psnr2(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (and the value)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--crops", nargs="+", default=["256x4", "384x9"], help="CROPxN estimates")
    ap.add_argument("--factors", type=int, nargs="+", default=[2, 4], help="thumbnail factors")
    ap.add_argument("--max-whole-s", type=float, default=15.0)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "frozen_norm.json"
    )
    args = ap.parse_args(argv)

    cfg = GeneratorConfig(ngf=16, n_blocks=6)
    gen = build_generator(cfg, generator=torch.Generator().manual_seed(0)).eval()
    tiling = TilingConfig.for_model(cfg.receptive_field, tile=args.tile)
    estimates: dict[str, tuple[str, dict[str, int]]] = {"whole": ("whole", {})}
    for spec in args.crops:
        crop, n = (int(v) for v in spec.split("x"))
        estimates[f"crops_{spec}"] = ("crops", {"crop": crop, "n_crops": n})
    for factor in args.factors:
        estimates[f"thumbnail_x{factor}"] = ("thumbnail", {"factor": factor})
    rows = []
    for size in args.sizes:
        lr = simulate_pair(SynthConfig(size=size), 7).lr.astype(np.float32)
        lo, hi = np.percentile(lr, [0.1, 99.9])
        norm = ModelConfig(
            generator=cfg, normalization=NormalizationConfig(low_a=float(lo), high_a=float(hi))
        ).normalization
        x = norm.to_model(lr)[None]
        set_mode(gen, "instance")
        start = time.perf_counter()
        with torch.inference_mode():
            ref = gen(torch.from_numpy(x)[None]).numpy()[0]
        whole_s = time.perf_counter() - start
        row: dict[str, object] = {"size": size, "whole_frame_s": whole_s}
        if whole_s > args.max_whole_s:
            row["skipped"] = f"whole-frame pass {whole_s:.1f} s > --max-whole-s"
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        start = time.perf_counter()
        naive = predict_tiled_frozen(gen, x, tiling, stats="tile")
        row["naive_tile_pass_s"] = time.perf_counter() - start
        row["psnr_naive_db"] = psnr2(naive, ref)
        row["maxabs_naive"] = float(np.abs(naive - ref).max())
        vec = compute_statistics(gen, x, "whole", size_multiple=cfg.size_multiple)
        tile_s, _ = timed(
            lambda vec=vec, x=x: predict_tiled_frozen(gen, x, tiling, packed=vec), args.repeats
        )
        row["frozen_tile_pass_s"] = tile_s
        for name, (kind, kw) in estimates.items():
            stats_s, vec = timed(
                lambda kind=kind, kw=kw, x=x: compute_statistics(
                    gen, x, kind, size_multiple=cfg.size_multiple, **kw
                ),
                args.repeats,
            )
            y = predict_tiled_frozen(gen, x, tiling, packed=vec)
            row[name] = {
                "estimate": kind,
                **kw,
                "psnr_db": psnr2(y, ref),
                "maxabs": float(np.abs(y - ref).max()),
                "stats_pass_s": stats_s,
                "stats_over_tile_pass": stats_s / tile_s,
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "benchmark": "frozen_norm",
        "generator": {
            **cfg.model_dump(),
            "receptive_field": cfg.receptive_field,
            "weights": "random N(0, 0.02), seed 0 (reduced canonical architecture)",
        },
        "tiling": {
            "tile": args.tile,
            "overlap": tiling.overlap,
            "halo": tiling.halo,
            "blend": tiling.blend,
            "batch_size": tiling.batch_size,
        },
        "repeats": args.repeats,
        "timing": "median seconds of repeats after one warm-up; fp32, torch CPU",
        "machine": machine(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
