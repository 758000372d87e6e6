"""The cost of per-frame trust in the frame runner: a frame with trust vs without (issue 17).

    python benchmarks/trust_cost.py [--sizes 512 1024 2048 4096] [--rounds 7] [--backend auto]
                                    [--out benchmarks/results/trust_cost.json]

A copy of the built-in CycleGAN is calibrated (``calibrate``) on 8 synthetic LR frames; two
frame runners share one engine, one scoring trust (``EnhanceConfig()``, the default) and one
not (``trust=False``). Per size, a synthetic LR frame goes through both, interleaved round by
round (one warm-up round); medians of ``runner.run(frame)`` and their ratio are reported, with
the scorer's own parts timed alone (``begin`` on the input, ``finish`` on the output). The
target of the issue: the default costs at most 25 % extra compute.
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

from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model
from cyclesr_deploy.engines import open_engine
from cyclesr_deploy.model import ModelFolder, load_model
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner
from cyclesr_deploy.synthetic.simulate import simulate_pair
from cyclesr_deploy.trust.calibrate import calibrate


def _medians(scored, plain, frame, rounds: int) -> dict[str, float]:
    """Median seconds of a frame through both runners (interleaved, alternating order, one
    warm-up round) and of the scorer's two parts alone."""
    m, out = scored.mapping, plain(frame)
    times: dict[str, list[float]] = {"trust": [], "no_trust": [], "begin": [], "finish": []}
    for r in range(rounds + 1):
        pair = [("trust", scored), ("no_trust", plain)]
        for key, runner in pair if r % 2 else pair[::-1]:
            t0 = time.perf_counter()
            runner.run(frame)
            times[key].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stats = scored.scorer.begin(frame, m.low_in, m.high_in)
        t1 = time.perf_counter()
        scored.scorer.finish(stats, out, m.low_out, m.high_out)
        times["begin"].append(t1 - t0)
        times["finish"].append(time.perf_counter() - t1)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/trust_cost.json"))
    args = ap.parse_args()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        shutil.copytree(builtin_model(DEFAULT_MODEL), model_dir)
        ModelFolder(model_dir).trust_json.unlink(missing_ok=True)
        calibrate(model_dir, [simulate_pair({"size": 256}, i).lr for i in range(8)], data="synth")
        model = load_model(model_dir)
        cfg = EnhanceConfig()
        with open_engine(model_dir, args.backend, tiling=cfg.engine_tiling) as engine:
            scored = FrameRunner(engine, model, cfg)
            plain = FrameRunner(engine, model, cfg.model_copy(update={"trust": False}))
            assert scored.scorer is not None and plain.scorer is None
            for size in args.sizes:
                frame = simulate_pair({"size": size}, 1000 + size).lr
                mode = scored.plan(frame.shape).mode
                med = _medians(scored, plain, frame, args.rounds)
                row = {
                    "size": size,
                    "plan": mode,
                    "median_s": {k: round(v, 5) for k, v in med.items()},
                    "extra_fraction": round(med["trust"] / med["no_trust"] - 1, 4),
                    "scorer_fraction": round((med["begin"] + med["finish"]) / med["no_trust"], 4),
                }
                rows.append(row)
                print(
                    f"{size}^2 ({mode}): no trust {med['no_trust']:.3f} s, trust "
                    f"{med['trust']:.3f} s (+{100 * row['extra_fraction']:.1f} %); scorer alone "
                    f"begin {med['begin'] * 1e3:.1f} ms + finish {med['finish'] * 1e3:.1f} ms",
                    flush=True,
                )
            engine_name = engine.name
    result = {
        "benchmark": "trust_cost",
        "machine": machine(),
        "load_before": load,
        "load_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "engine": engine_name,
        "rounds": args.rounds,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
