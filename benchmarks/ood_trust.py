"""Out-of-domain benchmark of the per-frame trust score (issue 17): does it flag the frames a
model hurts, and what does it cost?

    python benchmarks/ood_trust.py [--model reference-cyclegan|DIR] [--recipe-json FILE]
        [--calibration-data synth|model|PATH] [--calibration-frames 24] [--per-kind 6]
        [--in-domain 36] [--cost-sizes 1024 2048] [--cost-reps 5] [--out FILE]

Frames (``ood_cases.py``): in-domain frames of the model's training recipe (``--recipe-json``:
a SynthConfig mapping, e.g. ``{"vary": {"hr_photons": [200, 400]}}``; default ``{}`` = the
``cyclesr synth`` defaults of the current ``reference-cyclegan``) and out-of-domain kinds
(structures, LR optics, 8-bit data, degraded real images), each with its truth (the noise-free
HR image). Two splits from disjoint seeds (real images: disjoint halves of each image):
``dev`` (the scoring rule is chosen on it, ``ood_rules.py``; without the kinds of
``ood_cases.HELD_OUT``) and ``report`` (every kind; the held-out kinds reported apart). Real
kinds use the simulator's default LR optics whatever ``--recipe-json`` says. Every frame goes
through the one frame runner (``Enhancer``, default engine and settings), is scored by
``TrustScorer.begin``/``finish`` and labelled by ``trust.evaluate.quality_gain``
(``trust.evaluate.LABEL_RULE``: hurt / helped with margins, else neutral, left out of the AUC).
Scale-1 models only (the truth is on the LR grid): a model that upscales is refused up front.
Every statistic's raw value is stored per frame, and the calibration frames' too, so
``ood_rules.py`` can re-score the results with other rules offline.

Calibration (``--calibration-data``): ``synth`` (default) = ``--calibration-frames`` fresh
frames of the recipe (``trust.calibrate.synthetic_frames``: sizes 256, 512, 1024, seeds from
71000), ``model`` = the model folder's own ``trust.json``, or a TIFF/OME-Zarr file or folder of
in-domain LR frames. The model folder is copied into a temporary folder first: the benchmark
never writes into ``--model``.

Reported: per kind and split n, helped/hurt/neutral, median PSNR/SSIM gain, median trust,
flagged fraction; per split the ROC AUC of the trust score (its ``evidence``, -log10 of the
unsaturated score: the same ranking without ties at 0) for hurt vs helped, the false-alarm rate
on in-domain frames and the median gains on the out-of-domain structure kinds; the cost of
``begin`` + ``finish`` against the frame's inference at ``--cost-sizes`` (interleaved
repetitions, medians; absolute seconds and the fraction of the CPU inference: on a GPU engine
the same CPU work is a larger fraction) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine
from ood_cases import HELD_OUT, KINDS, Case, cases, synthetic
from ood_rules import split_summary

from cyclesr_deploy import __version__
from cyclesr_deploy.builtin import resolve_model
from cyclesr_deploy.export.trust import frames_of
from cyclesr_deploy.io import atomic_path
from cyclesr_deploy.model import TRUST_JSON, load_model
from cyclesr_deploy.runtime.enhancer import Enhancer
from cyclesr_deploy.trust import TrustScorer
from cyclesr_deploy.trust.calibrate import calibrate, synthetic_frames
from cyclesr_deploy.trust.evaluate import LABEL_RULE, quality_gain
from cyclesr_deploy.trust.score import finite

OUT = Path(__file__).resolve().parent / "results" / "ood_trust.json"
COST_SEED = 79_000


def _calibrate(model: Path, how: str, recipe: dict, n: int) -> str:
    if how == "model":
        if not (model / TRUST_JSON).is_file():
            raise SystemExit(f"--calibration-data model: {model} has no {TRUST_JSON}")
        return "the model folder's trust.json"
    if how == "synth":
        data = f"synthetic recipe {json.dumps(recipe)}: {n} frames, sizes 256/512/1024"
        calibrate(model, synthetic_frames(recipe, n), data=data)
        return data
    calibrate(model, frames_of(Path(how)), data=how)
    return how


def _row(case: Case, enhancer: Enhancer) -> dict:
    """One frame through the one frame runner (``Enhancer.run``: output and trust), labelled."""
    t0 = time.perf_counter()
    y, trust = enhancer.run(case.lr)
    seconds = time.perf_counter() - t0
    g = quality_gain(case.lr, y, case.truth)
    return {
        "split": case.split,
        "kind": case.kind,
        "group": case.group,
        "seed": case.seed,
        "size": case.size,
        "psnr_in": round(g.psnr_in, 3),
        "psnr_out": round(g.psnr_out, 3),
        "ssim_in": round(g.ssim_in, 4),
        "ssim_out": round(g.ssim_out, 4),
        "psnr_gain": round(g.psnr_gain, 3),
        "ssim_gain": round(g.ssim_gain, 4),
        "label": g.label,
        "hurt": g.hurt,
        "trust": trust.score,
        "evidence": round(trust.evidence, 4),
        "trusted": trust.trusted,
        "worst": trust.worst,
        "features": {k: finite(round(v, 6)) for k, v in trust.features.items()},
        "z": {k: finite(round(v, 3)) for k, v in trust.z.items()},
        "seconds": round(seconds, 4),  # inference and trust (the cost step times them apart)
    }


def _median(values: list[float]) -> float | None:
    return round(float(statistics.median(values)), 4) if values else None


def _kind_summary(rows: list[dict]) -> dict:
    return {
        "n": len(rows),
        "helped": sum(r["label"] == "helped" for r in rows),
        "hurt": sum(r["label"] == "hurt" for r in rows),
        "neutral": sum(r["label"] == "neutral" for r in rows),
        "median_psnr_gain": _median([r["psnr_gain"] for r in rows]),
        "median_ssim_gain": _median([r["ssim_gain"] for r in rows]),
        "median_trust": _median([r["trust"] for r in rows]),
        "flagged": round(sum(not r["trusted"] for r in rows) / len(rows), 3),
        "hurt_flagged": sum(r["hurt"] and not r["trusted"] for r in rows),
    }


def _split_summary(rows: list[dict]) -> dict:
    evidence = [r["evidence"] for r in rows]
    flagged = [not r["trusted"] for r in rows]
    structure = [r for r in rows if r["group"] == "structure"]
    return {
        **split_summary(rows, evidence, flagged, set(HELD_OUT)),
        "structure_median_psnr_gain": _median([r["psnr_gain"] for r in structure]),
        "structure_median_ssim_gain": _median([r["ssim_gain"] for r in structure]),
        "kinds": {
            k: _kind_summary([r for r in rows if r["kind"] == k])
            for k in KINDS
            if any(r["kind"] == k for r in rows)
        },
    }


def _cost(
    enhancer: Enhancer, scorer: TrustScorer, recipe: dict, sizes: list[int], reps: int
) -> dict:
    """begin + finish vs the frame's inference, interleaved repetitions, medians."""
    m = enhancer.runner.mapping
    out = {}
    for size in sizes:
        lr, _ = synthetic(recipe, COST_SEED + size, size)
        y = enhancer(lr)  # warm-up (plans, engine)
        scorer.finish(scorer.begin(lr, m.low_in, m.high_in), y, m.low_out, m.high_out)
        t_inf, t_begin, t_finish = [], [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            st = scorer.begin(lr, m.low_in, m.high_in)
            t1 = time.perf_counter()
            y = enhancer(lr)
            t2 = time.perf_counter()
            scorer.finish(st, y, m.low_out, m.high_out)
            t3 = time.perf_counter()
            t_begin.append(t1 - t0)
            t_inf.append(t2 - t1)
            t_finish.append(t3 - t2)
        inf, b, f = (statistics.median(t) for t in (t_inf, t_begin, t_finish))
        out[f"{size}x{size}"] = {
            "inference_s": round(inf, 4),
            "begin_s": round(b, 4),
            "finish_s": round(f, 4),
            "trust_ms": round(1000 * (b + f), 1),
            "overhead": round((b + f) / inf, 4),
            "reps": reps,
        }
    return out


def _table(result: dict) -> str:
    lines = [
        "| split | kind | n | helped | hurt | neutral | PSNR gain | SSIM gain | trust (median) "
        "| flagged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in ("dev", "report"):
        for kind, s in result["splits"][split]["kinds"].items():
            lines.append(
                f"| {split} | {kind} | {s['n']} | {s['helped']} | {s['hurt']} | {s['neutral']} | "
                f"{s['median_psnr_gain']:+.2f} | {s['median_ssim_gain']:+.3f} | "
                f"{s['median_trust']:.3g} | {s['flagged']:.2f} |"
            )
    return "\n".join(lines)


def dump(result: dict) -> str:
    """The result as JSON: indented, one line per frame."""
    head = json.dumps({k: v for k, v in result.items() if k != "frames"}, indent=1)
    frames = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in result["frames"])
    return head[:-2] + ',\n "frames": [\n  ' + frames + "\n ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="reference-cyclegan")
    ap.add_argument("--recipe-json", type=Path, help="the model's training recipe (SynthConfig)")
    ap.add_argument("--calibration-data", default="synth", help="synth | model | PATH")
    ap.add_argument("--calibration-frames", type=int, default=24)
    ap.add_argument("--per-kind", type=int, default=6, help="frames per out-of-domain kind/split")
    ap.add_argument("--in-domain", type=int, default=36, help="in-domain frames per split")
    ap.add_argument("--cost-sizes", type=int, nargs="*", default=[1024, 2048])
    ap.add_argument("--cost-reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    recipe = json.loads(args.recipe_json.read_text(encoding="utf-8")) if args.recipe_json else {}
    scale = load_model(resolve_model(args.model)).scale
    if scale != 1:
        ap.error(
            f"--model {args.model} upscales x{scale}: this benchmark compares output and input "
            "with one truth on the LR grid, so it takes scale-1 models only"
        )
    print("note: real kinds use the default LR optics whatever --recipe-json says", file=sys.stderr)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ood_trust_") as tmp:
        model = Path(tmp) / "model"
        keep = args.calibration_data == "model"
        ignore = None if keep else shutil.ignore_patterns(TRUST_JSON)
        shutil.copytree(resolve_model(args.model), model, ignore=ignore)
        data = _calibrate(model, args.calibration_data, recipe, args.calibration_frames)
        with Enhancer(model) as enhancer:
            scorer = TrustScorer.for_model(model, enhancer.scale)
            assert scorer is not None
            rows: list[dict] = []
            for split in ("dev", "report"):
                for case in cases(recipe, split, args.per_kind, args.in_domain):
                    rows.append(_row(case, enhancer))
                    r = rows[-1]
                    print(
                        f"{split:6s} {r['kind']:16s} {r['size']:>9s} dPSNR {r['psnr_gain']:+6.2f} "
                        f"dSSIM {r['ssim_gain']:+.3f} {r['label']:7s} "
                        f"trust {r['trust']:.3g} ({r['worst']})",
                        file=sys.stderr,
                        flush=True,
                    )
            backend = enhancer.backend
            cal = scorer.calibration
        with Enhancer(model, trust=False) as unscored:  # the cost step times the scorer apart
            cost = _cost(unscored, scorer, recipe, args.cost_sizes, args.cost_reps)
    result = {
        "benchmark": "ood_trust",
        "version": __version__,
        "command": "python benchmarks/ood_trust.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "model": str(args.model),
        "backend": backend,
        "recipe": recipe,
        "calibration": {
            "data": data,
            "n_frames": cal.n_frames,
            "sigma": cal.sigma,
            "threshold": cal.threshold,
            "false_alarm_rate": cal.false_alarm_rate,
            "backend": cal.backend,
            "features": {
                k: {"median": v.median, "scale": v.scale, "side": v.side}
                for k, v in cal.features.items()
            },
            "recorded": cal.recorded,
        },
        "label": LABEL_RULE,
        "real_kinds_optics": "the simulator's default LR optics (not --recipe-json)",
        "held_out_kinds": list(HELD_OUT),
        "splits": {
            s: _split_summary([r for r in rows if r["split"] == s]) for s in ("dev", "report")
        },
        "cost": cost,
        "cost_note": "CPU seconds of begin + finish against the CPU inference; on a GPU engine "
        "the same CPU work is a larger fraction (not measured here)",
        "frames": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as part:
        part.write_text(dump(result), encoding="utf-8")
    print(_table(result))
    for s in ("dev", "report"):
        sm = result["splits"][s]
        print(
            f"{s}: AUC {sm['auc_hurt_vs_helped']}, false alarms in-domain "
            f"{sm['false_alarm_in_domain']}, hurt flagged {sm['hurt_flagged']}, helped OOD "
            f"flagged {sm['helped_ood_flagged']}, structure kinds median gain "
            f"{sm['structure_median_psnr_gain']} dB / {sm['structure_median_ssim_gain']} SSIM"
        )
    print("cost:", json.dumps(cost))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
