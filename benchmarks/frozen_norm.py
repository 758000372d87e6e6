"""Frozen (frame-level) InstanceNorm statistics vs naive per-tile instance norm: quality and cost.

    python benchmarks/frozen_norm.py [--models reference random] [--sizes 1024 2048]
        [--seeds 1] [--repeats 3] [--slow-repeats 1] [--append] [--out FILE]

Generators: ``reference`` = the shipped trained ``reference-cyclegan`` (ngf 16, 6 blocks,
RF 121); ``random`` = the canonical architecture (``GeneratorConfig()``: ngf 64, 9 blocks,
RF 169) with random N(0, 0.02) weights (seed 0). Input: a synthetic LR frame
(``simulate_pair(SynthConfig(size, seed=S)).lr``, S from ``--seeds``: other ground truths)
mapped to [-1, 1] with the reference model's percentiles (``normalization.low_a/high_a``), as
the pipeline does.

Per model and size, against whole-frame inference (per-frame instance norm):

* PSNR(tiled, whole) in dB (range 2) and max abs error of naive tiling (per-tile statistics)
  and of frozen statistics from each estimate: ``whole`` (exact), ``crops_default``
  (``engines.frozen_stats.crops_for`` crops pooled with calibrated weights, the default),
  ``crops_uniform`` (the same crops pooled equally, as before calibration), a thumbnail
  (masked pooling and other crop sets: git history of ``results/frozen_norm.md``);
  tiling = ``TilingConfig.for_model(RF, tile=512)`` (cosine blend, batch 4);
* seconds (medians of ``repeats`` runs after one warm-up; ``--slow-repeats`` runs and no
  warm-up where one whole-frame pass exceeds ``--slow-s``) of whole-frame inference, of the
  frozen tile pass and of each statistics pass, and the ratio stats / tile pass.

Where a whole-frame pass exceeds ``--slow-s`` the non-default estimates are scored by the
frozen *whole-frame* pass with their statistics (``"scored": "frozen whole-frame pass"``), equal
to the frozen tile pass up to float rounding (checked by the ``whole`` and default rows, which
always run the real tile pass). fp32, torch CPU, ``torch.set_num_threads(--threads)``.
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

from cyclesr_deploy.engines.frozen_stats import CHECK_MIN_PSNR_DB
from cyclesr_deploy.engines.frozen_torch import (
    check_crops_estimate,
    compute_statistics,
    crops_for,
    freeze_instance_norms,
    load_packed,
    predict_tiled_frozen,
    psnr_range2,
    set_mode,
)
from cyclesr_deploy.export.frozen_check import CHECK_SIZES, check_frames
from cyclesr_deploy.model import WEIGHTS, GeneratorConfig, load_model
from cyclesr_deploy.nets import build_generator
from cyclesr_deploy.runtime.tiling import TilingConfig
from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

REFERENCE = Path(__file__).resolve().parents[1] / "cyclesr_deploy" / "models" / "reference-cyclegan"


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, object]:
    """(median seconds, value): one warm-up run (its value returned) then ``repeats`` timed
    runs; without ``warmup`` the first run is timed too (``repeats`` runs in all)."""
    times = []
    start = time.perf_counter()
    result = fn()
    if not warmup:
        times.append(time.perf_counter() - start)
    while len(times) < repeats:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def generator(which: str):
    if which == "reference":
        model = load_model(REFERENCE)
        cfg = model.generator
        gen = build_generator(cfg)
        gen.load_state_dict(torch.load(REFERENCE / WEIGHTS["ab"], map_location="cpu"))
        return gen.eval(), cfg, "trained reference-cyclegan (generator_ab.pt)"
    cfg = GeneratorConfig()
    gen = build_generator(cfg, generator=torch.Generator().manual_seed(0))
    return gen.eval(), cfg, "random N(0, 0.02), seed 0 (canonical ngf 64, 9 blocks)"


def estimates(size: int, areas: list[float]) -> dict[str, dict[str, object]]:
    crop, n = crops_for((size, size))
    crops = {"stats": "crops", "crop": crop, "n_crops": n}
    out = {
        "whole": {"stats": "whole"},
        "crops_default": {**crops, "margin": 0.0, "calibrate": True},
        "crops_uniform": {**crops, "margin": 0.0, "calibrate": False},
        "thumbnail_x2": {"stats": "thumbnail", "factor": 2},
    }
    for area in areas:  # larger calibrated crop samples (how much would the crops need?)
        crop, n = crops_for((size, size), area=area)
        out[f"crops_area_{area:g}"] = {
            "stats": "crops",
            "crop": crop,
            "n_crops": n,
            "margin": 0.0,
            "calibrate": True,
        }
    return out


def auto_check(which: str) -> dict[str, object]:
    """What ``--stats auto`` picks for this generator: the export-time check
    (:mod:`cyclesr_deploy.export.frozen_check`: synthetic 1024^2 and 2048^2 LR frames, seed
    11, not among the benchmark frames) of the crops estimate against whole-frame inference,
    its lowest PSNR against ``CHECK_MIN_PSNR_DB``."""
    gen, cfg, _ = generator(which)
    model = load_model(REFERENCE).model_copy(update={"generator": cfg})
    psnrs = [
        check_crops_estimate(gen, torch.from_numpy(x), size_multiple=cfg.size_multiple)["psnr_db"]
        for x, _ in check_frames(model)
    ]
    choice = "crops" if min(psnrs) >= CHECK_MIN_PSNR_DB else "whole"
    print(f"{which}: auto check {psnrs} dB -> {choice}", flush=True)
    return {"choice": choice, "check_psnr_db": psnrs, "check_sizes": list(CHECK_SIZES)}


def bench(which: str, size: int, seed: int, args, auto: dict[str, object]) -> dict[str, object]:
    gen, cfg, weights = generator(which)
    layers = freeze_instance_norms(gen)
    norm = load_model(REFERENCE).normalization
    lr = simulate_pair(SynthConfig(size=size, seed=seed)).lr.astype(np.float32)
    x = norm.to_model(lr)[None].astype(np.float32)  # (1, H, W)
    tiling = TilingConfig.for_model(cfg.receptive_field, tile=args.tile, batch_size=4)
    m = cfg.size_multiple

    def whole_frame(mode="instance"):
        set_mode(layers, mode)
        try:
            with torch.inference_mode():
                return gen(torch.from_numpy(x)[None]).numpy()[0]
        finally:
            set_mode(layers, "instance")

    start = time.perf_counter()
    ref = whole_frame()
    first = time.perf_counter() - start
    slow = first > args.slow_s
    reps, warm = (args.slow_repeats, False) if slow else (args.repeats, True)
    whole_s = first if slow else timed(whole_frame, reps)[0]
    row: dict[str, object] = {
        "model": which,
        "size": size,
        "seed": seed,
        "weights": weights,
        "receptive_field": cfg.receptive_field,
        "tiling": {"tile": args.tile, "overlap": tiling.overlap, "halo": tiling.halo},
        "repeats": reps,
        "warmup": warm,
        "whole_frame_s": whole_s,
    }
    print(f"{which} {size} seed {seed}: whole frame {whole_s:.2f} s", flush=True)
    naive = predict_tiled_frozen(gen, x, tiling, stats="tile")
    row["naive"] = {"psnr_db": psnr_range2(naive, ref), "maxabs": float(np.abs(naive - ref).max())}
    del naive
    tile_s = None
    for name, kw in estimates(size, args.areas).items():
        kind = kw["stats"]
        params = {k: v for k, v in kw.items() if k != "stats"}
        stats_s, vec = timed(
            lambda kind=kind, params=params: compute_statistics(
                gen, x, kind, size_multiple=m, **params
            ).clone(),
            reps,
            warm,
        )
        real = name in ("whole", "crops_default") or not slow
        if real:
            run = lambda vec=vec: predict_tiled_frozen(gen, x, tiling, packed=vec)  # noqa: E731
            if tile_s is None:
                tile_s, y = timed(run, reps, warm)
                row["frozen_tile_pass_s"] = tile_s
            else:
                y = run()
        else:
            load_packed(layers, vec)
            y = whole_frame("frozen")
        assert tile_s is not None
        row[name] = {
            **kw,
            "psnr_db": psnr_range2(y, ref),
            "maxabs": float(np.abs(y - ref).max()),
            "stats_pass_s": stats_s,
            "stats_over_tile_pass": stats_s / tile_s,
            "scored": "frozen tile pass" if real else "frozen whole-frame pass",
        }
        print(f"  {name}: {json.dumps(row[name])}", flush=True)
    picked = row["whole" if auto["choice"] == "whole" else "crops_default"]
    row["auto"] = {
        **auto,
        "psnr_db": picked["psnr_db"],
        "maxabs": picked["maxabs"],
        "stats_over_tile_pass": picked["stats_over_tile_pass"],
    }
    return row


def markdown(rows: list[dict[str, object]]) -> str:
    names = []
    for r in rows:
        names += [k for k in r if isinstance(r[k], dict) and "stats" in r[k] and k not in names]
    lines = [
        "# Frozen InstanceNorm statistics: PSNR(tiled, whole frame) and cost",
        "",
        "Generated by `python benchmarks/frozen_norm.py` (see its docstring; JSON next to this "
        "file). PSNR in dB (range 2; higher is better), `stats/tile` = time of the statistics "
        "pass / time of the frozen tile pass (512-px tiles, torch CPU, 2 threads).",
        "",
        "| model | size | frame seed | whole-frame s | tile pass s | naive dB | "
        + "**auto** = choice: dB (stats/tile) | "
        + " | ".join(f"{n} dB (stats/tile)" for n in names)
        + " |",
        "|---" * (7 + len(names)) + "|",
    ]
    for r in rows:
        cells = [
            str(r["model"]),
            str(r["size"]),
            str(r.get("seed", 1)),
            f"{r['whole_frame_s']:.2f}",
            f"{r['frozen_tile_pass_s']:.2f}",
            f"{r['naive']['psnr_db']:.1f}",
        ]
        a = r.get("auto")
        cells.append(
            f"**{a['choice']}: {a['psnr_db']:.1f} ({a['stats_over_tile_pass']:.2f})**" if a else "-"
        )
        for n in names:
            e = r.get(n)
            cells.append(f"{e['psnr_db']:.1f} ({e['stats_over_tile_pass']:.2f})" if e else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    keys = ("stats", "crop", "n_crops", "margin", "calibrate", "factor")
    last = {n: next(r[n] for r in reversed(rows) if n in r) for n in names}
    specs = [
        f"`{n}` = {json.dumps({k: v for k, v in e.items() if k in keys})}" for n, e in last.items()
    ]
    lines.append(
        "Estimates (parameters of the last row that has them; `crops_default` = "
        "`engines.frozen_stats.crops_for`): " + "; ".join(specs) + "."
    )
    checks = {r["model"]: r["auto"] for r in rows if "auto" in r}
    lines.append("")
    lines.append(
        "**auto** = what `--stats auto` uses: the model's export-time check (crops estimate vs "
        "whole-frame inference on synthetic 1024^2 and 2048^2 check frames, seed 11) keeps the "
        "crops where both reach 47 dB, else whole-frame statistics: "
        + "; ".join(
            f"{m} {' / '.join(f'{p:.1f}' for p in c['check_psnr_db'])} dB -> {c['choice']}"
            for m, c in checks.items()
        )
        + "."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["reference", "random"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1], help="synthetic frame seeds")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-repeats", type=int, default=1)
    ap.add_argument("--slow-s", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="keep the rows already in --out")
    ap.add_argument(
        "--areas",
        type=float,
        nargs="*",
        default=[],
        help="also calibrated crops covering about these fractions of the frame",
    )
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "frozen_norm.json"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    if args.append and args.out.is_file():
        rows = json.loads(args.out.read_text(encoding="utf-8"))["rows"]
    for which in args.models:
        auto = auto_check(which)
        for size in args.sizes:
            for seed in args.seeds:
                rows.append(bench(which, size, seed, args, auto))
            result = {
                "benchmark": "frozen_norm",
                "timing": "median seconds; fp32, torch CPU",
                "machine": machine(),
                "rows": rows,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            args.out.with_suffix(".md").write_text(markdown(rows), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
