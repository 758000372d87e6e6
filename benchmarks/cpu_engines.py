"""CPU engines side by side on the built-in model: the default (``open_engine`` auto) vs ONNX
Runtime FP32 and PyTorch eager, OpenVINO's precisions, and the default tile vs 512 px.

    python benchmarks/cpu_engines.py [--rounds 5] [--out benchmarks/results/cpu_engines.json]

Part 1, engine alone on whole frames (1024^2, 2048^2; a synthetic LR frame in the model's range,
batch 1), per thread setting (2 threads; all cores = OpenVINO's / ONNX Runtime's / torch's own
default): every engine once per round, ``rounds`` rounds after one warm-up round (medians;
interleaved, so load from other processes hits every row alike). Each row's output is compared
with ONNX Runtime FP32's as uint16 (the model's output mapping: max / mean levels, PSNR on the
[-1, 1] output). Rows: ``default`` (auto: the gated precision), ``openvino-fp32``,
``openvino-bf16``, ``openvino-int8``, ``onnxruntime-fp32``, ``torch-fp32``.

Part 2, a 4096^2 frame through the frame runner (what ``cyclesr enhance`` runs per frame, frozen
statistics tiles): the default tile (``auto``) vs ``--tile 512``, same engine, interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine

from cyclesr_deploy.bench.latency import synthetic_frame
from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model
from cyclesr_deploy.engines import open_engine
from cyclesr_deploy.model import load_model
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner

ENGINES = {
    "default": {},
    "openvino-fp32": {"backend": "openvino", "precision": "fp32"},
    "openvino-bf16": {"backend": "openvino", "precision": "bf16"},
    "openvino-int8": {"backend": "openvino", "precision": "int8"},
    "onnxruntime-fp32": {"backend": "onnxruntime", "precision": "fp32", "device": "cpu"},
    "torch-fp32": {"backend": "torch", "precision": "fp32", "device": "cpu"},
}


def load() -> float:
    return (
        float(Path("/proc/loadavg").read_text().split()[0])
        if Path("/proc/loadavg").exists()
        else -1
    )


def to_uint16(y: np.ndarray, model) -> np.ndarray:
    raw = model.normalization.from_model(np.clip(y, -1, 1), "b")
    return np.clip(np.rint(raw), 0, 65535).astype(np.int64)


def part1(model_dir: Path, size: int, threads: int | None, rounds: int) -> dict:
    model = load_model(model_dir)
    frame = synthetic_frame(model, size, seed=7)
    x = model.normalization.to_model(frame.astype(np.float32), "a")[None, None]
    x = np.ascontiguousarray(x)
    engines = {}
    for name, kw in ENGINES.items():
        try:
            engines[name] = open_engine(model_dir, threads=threads, **kw).__enter__()
        except Exception as exc:  # a precision this CPU lacks, a missing backend
            print(f"skip {name}: {exc}", file=sys.stderr)
    outputs = {n: np.array(e.infer(x), copy=True) for n, e in engines.items()}  # warm-up round
    times: dict[str, list[float]] = {n: [] for n in engines}
    loads = [load()]
    for _ in range(rounds):
        for n, e in engines.items():
            t0 = time.perf_counter()
            e.infer(x)
            times[n].append(time.perf_counter() - t0)
        loads.append(load())
    ref = outputs["onnxruntime-fp32"]
    ref16 = to_uint16(ref, model)
    rows = {}
    base = statistics.median(times["onnxruntime-fp32"])
    for n, e in engines.items():
        med = statistics.median(times[n])
        d16 = np.abs(to_uint16(outputs[n], model) - ref16)
        mse = float(np.mean((np.clip(outputs[n], -1, 1) - np.clip(ref, -1, 1)) ** 2))
        rows[n] = {
            "engine": e.name,
            "median_ms": round(1e3 * med, 1),
            "speed_vs_ort_fp32": round(base / med, 3),
            "speed_vs_torch": round(statistics.median(times["torch-fp32"]) / med, 3)
            if "torch-fp32" in times
            else None,
            "vs_ort_fp32_max_levels": int(d16.max()),
            "vs_ort_fp32_mean_levels": round(float(d16.mean()), 3),
            "vs_ort_fp32_psnr_db": round(10 * np.log10(4 / mse), 1) if mse > 0 else "inf",
            "samples_ms": [round(1e3 * t, 1) for t in times[n]],
        }
    for e in engines.values():
        e.__exit__(None, None, None)
    return {"size": size, "threads": threads, "load_1min": loads, "rows": rows}


def part2(model_dir: Path, rounds: int) -> dict:
    model = load_model(model_dir)
    frame = synthetic_frame(model, 4096, seed=9)
    cfgs = {"default (tile auto)": EnhanceConfig(), "--tile 512": EnhanceConfig(tile=512)}
    with open_engine(model_dir, tiling="auto", frames=[frame.shape]) as engine:
        runners = {n: FrameRunner(engine, model, c) for n, c in cfgs.items()}
        outs = {n: r(frame) for n, r in runners.items()}  # warm-up
        times: dict[str, list[float]] = {n: [] for n in runners}
        loads = [load()]
        for _ in range(rounds):
            for n, r in runners.items():
                t0 = time.perf_counter()
                r(frame)
                times[n].append(time.perf_counter() - t0)
            loads.append(load())
        plans = {n: r.plan(frame.shape) for n, r in runners.items()}
        name = engine.name
    a, b = (outs[n].astype(np.int64) for n in cfgs)
    diff = np.abs(a - b)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {
        "engine": name,
        "rows": {
            n: {
                "median_s": round(med[n], 2),
                "tile_shape": list(plans[n].tiles.tile_shape),
                "tiles": len(plans[n].tiles.tiles),
                "mode": plans[n].mode,
                "computed_px_per_frame_px": round(
                    len(plans[n].tiles.tiles) * np.prod(plans[n].tiles.tile_shape) / 4096**2, 3
                ),
                "samples_s": [round(t, 2) for t in times[n]],
            }
            for n in cfgs
        },
        "speedup_default_vs_512": round(med["--tile 512"] / med["default (tile auto)"], 3),
        "output_diff_levels": {"max": int(diff.max()), "share_nonzero": float((diff > 0).mean())},
        "load_1min": loads,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_engines.json"))
    args = ap.parse_args()
    model_dir = builtin_model(DEFAULT_MODEL)
    result = {"machine": machine(), "model": DEFAULT_MODEL, "rounds": args.rounds, "part1": []}
    for size in args.sizes:
        for threads in (2, None):
            print(f"part 1: {size}^2, threads {threads or 'all'}", file=sys.stderr)
            result["part1"].append(part1(model_dir, size, threads, args.rounds))
    print("part 2: 4096^2, tile auto vs 512", file=sys.stderr)
    result["part2"] = part2(model_dir, max(2, args.rounds // 2))
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
