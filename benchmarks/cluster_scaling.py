"""The cluster path (``cyclesr enhance --cluster``, issue 16): scheduling efficiency, per-frame
overhead against plain ``enhance``, and peak memory per worker against stack length.

    python benchmarks/cluster_scaling.py [--reps 3] [--frames 480] [--frames-per-worker 240]
        [--parts scheduling,overhead,memory] [--out benchmarks/results/cluster_scaling.json]

1. **Scheduling efficiency**: an engine with a fixed latency (100 ms per call: it sleeps, so N
   worker processes may exceed the cores) behind the real FrameRunner, one call per 64^2 frame;
   ``local:N`` clusters (N = 1, 2, 4, 8) enhance a TIFF stack into OME-Zarr in blocks of 2
   frames. Throughput = M / wall time of ``enhance_on_cluster`` (cluster started, workers'
   imports and engines warmed beforehand; the Zarr finish task included); efficiency(N) =
   throughput(N) / (N x throughput(1)). Target: >= 0.90. Two modes, side by side on the same
   warm cluster: *strong* (the same M = ``--frames`` for every N: at N = 8 the ideal run is
   only 6 s) and *weak* (M = ``--frames-per-worker`` x N: every run ideally lasts as long).
   Also the **fixed cost** of a run: a run of one block per worker (2 x N frames) minus one
   block's latency, split by the scheduler's task stream (call -> first block, last block ->
   finish task, the finish task, -> return); and the **per-frame cost** a worker pays besides
   the engine's latency: (wall - fixed cost) x N / M - 100 ms. Interleaved repetitions
   (N = 1, 2, 4, 8 in turn), medians.
2. **Per-frame overhead**: the built-in model (ONNX Runtime, CPU) on a stack of 512^2 frames:
   plain ``enhance_files`` (one process, TIFF out and Zarr out) vs ``local:1`` (one worker with
   all the cores' threads, Zarr out, blocks of 8; the cluster started beforehand), interleaved,
   medians; overhead = (cluster - plain) / frames.
3. **Peak memory per worker**: ``local:1`` on stacks of 16, 64 and 256 frames (128^2, the real
   model, Zarr out, blocks of 8): the worker process's peak RSS (``ru_maxrss``; Linux), a fresh
   cluster each.

Not measured (no GPU on this machine): two workers on one GPU vs one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import watch_latency
from benchmarks._machine import machine
from benchmarks.watch_latency import SleepEngine
from cyclesr_deploy.builtin import DEFAULT_MODEL, builtin_model
from cyclesr_deploy.runtime.cluster import (
    EngineRecipe,
    enhance_on_cluster,
    local_cluster,
)
from cyclesr_deploy.runtime.runner import EnhanceConfig

MODEL = str(builtin_model(DEFAULT_MODEL))
# the workers get the fixed-latency engine by value (they need not find the benchmarks folder)
cloudpickle.register_pickle_by_value(watch_latency)


@dataclass(frozen=True)
class SleepRecipe(EngineRecipe):
    """The built-in model's settings (model.json), a sleeping engine."""

    latency: float = 0.1

    def open(self) -> SleepEngine:
        return SleepEngine(self.latency)


def _stack(path: Path, n: int, side: int) -> Path:
    rng = np.random.default_rng(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = rng.integers(200, 3000, (n, side, side)).astype(np.uint16)
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


def _warm_imports() -> None:
    """What a worker imports on its first tasks (the package; ome-zarr-models for the finish
    task): once per worker process, like opening the engine, so outside the timings."""
    import ome_zarr_models.v05.image  # noqa: F401
    import pydantic_zarr.v3  # noqa: F401

    import cyclesr_deploy.runtime.cluster  # noqa: F401


def _client(n: int):  # type: ignore[no-untyped-def]
    from distributed import Client

    cluster = local_cluster(n, gpus=[])
    client = Client(cluster)
    client.wait_for_workers(n)
    client.run(_warm_imports)
    return cluster, client


def _timed_run(client, src, out, recipe, cfg, block):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    summary = enhance_on_cluster([src], out, recipe, cfg, client=client, block=block)
    assert summary.ok, summary.files
    return time.perf_counter() - t


def _phases(client, src, out, recipe, cfg, block):  # type: ignore[no-untyped-def]
    """One run's wall time split by the scheduler's task stream: call -> first block starts,
    the blocks' span, last block done -> finish task starts, the finish task, its end ->
    return."""
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        t0 = time.time()
        summary = enhance_on_cluster([src], out, recipe, cfg, client=client, block=block)
        t1 = time.time()
    assert summary.ok, summary.files

    def span(key: str) -> tuple[float, float]:
        ss = [
            x for d in stream.data if d["key"].startswith(key) for x in d["startstops"]
            if x["action"] == "compute"
        ]  # fmt: skip
        return min(x["start"] for x in ss), max(x["stop"] for x in ss)

    b0, b1 = span("run_block")
    f0, f1 = span("finish_zarr")
    return {
        "wall": t1 - t0,
        "to_first_block": b0 - t0,
        "blocks": b1 - b0,
        "to_finish": f0 - b1,
        "finish": f1 - f0,
        "to_return": t1 - f1,
    }


def _throughput(times: dict[int, list[float]], frames: dict[int, int]) -> dict[str, object]:
    fps = {n: frames[n] / statistics.median(ts) for n, ts in times.items()}
    eff = {n: fps[n] / (n * fps[1]) for n in fps}
    return {
        "frames": {str(n): m for n, m in frames.items()},
        "seconds": {str(n): [round(t, 3) for t in ts] for n, ts in times.items()},
        "frames_per_s": {str(n): round(v, 3) for n, v in fps.items()},
        "efficiency": {str(n): round(v, 4) for n, v in eff.items()},
        "met": all(v >= 0.9 for v in eff.values()),
    }


def scheduling(root: Path, reps: int, frames: int, per_worker: int) -> dict[str, object]:
    """Strong scaling (the same ``frames`` for every N), weak scaling (``per_worker`` x N
    frames: every run lasts about as long) and the fixed cost of a run (one block per worker),
    interleaved: for each N in turn, one of each on the same warm cluster."""
    block, latency = 2, 0.1
    cfg = EnhanceConfig(tile=0, output_format="zarr")
    recipe = SleepRecipe(MODEL, tiling=cfg.engine_tiling, latency=latency)
    ns = (1, 2, 4, 8)
    strong_src = _stack(root / "sched" / "s.tif", frames, 64)
    weak_src = {n: _stack(root / "sched" / f"w{n}.tif", per_worker * n, 64) for n in ns}
    small_src = {n: _stack(root / "sched" / f"f{n}.tif", block * n, 64) for n in ns}
    strong: dict[int, list[float]] = {n: [] for n in ns}
    weak: dict[int, list[float]] = {n: [] for n in ns}
    fixed: dict[int, list[dict[str, float]]] = {n: [] for n in ns}
    for rep in range(reps):
        for n in ns:
            cluster, client = _client(n)
            try:  # warm-up: every worker opens its engine once
                warm = _stack(root / "warm" / f"w{n}-{rep}.tif", 2 * n, 64)
                _timed_run(client, warm, root / "warm-out" / f"{n}-{rep}", recipe, cfg, 1)
                for i in range(3):  # one block per worker: what a run costs besides frames
                    out = root / "fixed-out" / f"{n}-{rep}-{i}"
                    fixed[n].append(_phases(client, small_src[n], out, recipe, cfg, block))
                t = _timed_run(client, strong_src, root / "sched-out" / f"{n}-{rep}", recipe,
                               cfg, block)  # fmt: skip
                strong[n].append(t)
                tw = _timed_run(client, weak_src[n], root / "weak-out" / f"{n}-{rep}", recipe,
                                cfg, block)  # fmt: skip
                weak[n].append(tw)
                print(f"scheduling rep {rep} N={n}: strong {frames / t:.2f} frames/s, weak "
                      f"{per_worker * n / tw:.2f} frames/s, fixed "
                      f"{fixed[n][-1]['wall'] - block * latency:.3f} s", flush=True)  # fmt: skip
            finally:
                client.close()
                cluster.close()
    fixed_s = {
        n: statistics.median(p["wall"] for p in ps) - block * latency for n, ps in fixed.items()
    }
    phases = {
        str(n): {k: round(statistics.median(p[k] for p in ps), 3) for k in ps[0]}
        for n, ps in fixed.items()
    }

    def per_frame_ms(times: dict[int, list[float]], m: dict[int, int]) -> dict[str, float]:
        """What each frame costs its worker besides the engine's latency: (wall - fixed
        cost) x N / frames - latency."""
        return {
            str(n): round(1e3 * ((statistics.median(ts) - fixed_s[n]) * n / m[n] - latency), 2)
            for n, ts in times.items()
        }

    m_strong = {n: frames for n in ns}
    m_weak = {n: per_worker * n for n in ns}
    return {
        "block": block,
        "latency_s": latency,
        "frame": [64, 64],
        "target": 0.9,
        "strong": {**_throughput(strong, m_strong), "per_frame_ms": per_frame_ms(strong, m_strong)},
        "weak": {
            **_throughput(weak, m_weak),
            "frames_per_worker": per_worker,
            "per_frame_ms": per_frame_ms(weak, m_weak),
        },
        "fixed_cost": {
            "how": f"a run of {block} x N frames (one block per worker), minus one block's "
            "latency; phases from the scheduler's task stream, medians",
            "seconds": {str(n): round(v, 3) for n, v in fixed_s.items()},
            "phases_s": phases,
        },
    }


def overhead(root: Path, reps: int, frames: int) -> dict[str, object]:
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.model import load_model
    from cyclesr_deploy.runtime.pipeline import enhance_files

    src = _stack(root / "ovh" / "s.tif", frames, 512)
    cores = os.cpu_count() or 1
    results: dict[str, list[float]] = {"plain_tiff": [], "plain_zarr": [], "cluster_zarr": []}
    t = time.perf_counter()
    cluster, client = _client(1)
    start_s = time.perf_counter() - t
    try:
        for rep in range(reps + 1):  # rep 0 warms both paths and is dropped
            for fmt in ("tiff", "zarr"):
                cfg = EnhanceConfig(output_format=fmt)
                t = time.perf_counter()
                with open_engine(MODEL, tiling=cfg.engine_tiling, stats=cfg.stats) as engine:
                    s = enhance_files([src], root / f"plain-{fmt}-{rep}", engine,
                                      load_model(MODEL), cfg)  # fmt: skip
                assert s.ok, s.files
                if rep:
                    results[f"plain_{fmt}"].append(time.perf_counter() - t)
            cfg = EnhanceConfig(output_format="zarr")
            recipe = EngineRecipe(MODEL, tiling=cfg.engine_tiling, stats=cfg.stats, threads=cores)
            tc = _timed_run(client, src, root / f"cluster-{rep}", recipe, cfg, 8)
            if rep:
                results["cluster_zarr"].append(tc)
            print(f"overhead rep {rep}: cluster {tc:.2f} s", flush=True)
    finally:
        client.close()
        cluster.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "frames": frames,
        "frame": [512, 512],
        "seconds": results,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "per_frame_ms": {k: round(1e3 * v / frames, 1) for k, v in med.items()},
        "cluster_overhead_ms_per_frame_vs_plain_zarr": round(
            1e3 * (med["cluster_zarr"] - med["plain_zarr"]) / frames, 1
        ),
        "cluster_overhead_ms_per_frame_vs_plain_tiff": round(
            1e3 * (med["cluster_zarr"] - med["plain_tiff"]) / frames, 1
        ),
        "ratio_cluster_to_plain_tiff": round(med["cluster_zarr"] / med["plain_tiff"], 3),
        "cluster_start_s": round(start_s, 2),
        "note": "plain: engine opened inside the timing (as the CLI does); cluster: engine "
        "opened by the worker on the run's first block (inside the timing, also)",
    }


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(root: Path, lengths: tuple[int, ...]) -> dict[str, object]:
    cfg = EnhanceConfig(output_format="zarr")
    recipe = EngineRecipe(MODEL, tiling=cfg.engine_tiling, stats=cfg.stats, threads=1)
    peaks = {}
    for n in lengths:
        src = _stack(root / "mem" / f"s{n}.tif", n, 128)
        cluster, client = _client(1)
        try:
            _timed_run(client, src, root / f"mem-out-{n}", recipe, cfg, 8)
            (peak,) = client.run(_peak_rss_mib).values()
        finally:
            client.close()
            cluster.close()
        peaks[str(n)] = round(peak, 1)
        print(f"memory: {n} frames -> worker peak {peak:.1f} MiB", flush=True)
    values = list(peaks.values())
    return {
        "frame": [128, 128],
        "block": 8,
        "worker_peak_rss_mib": peaks,
        "spread_mib": round(max(values) - min(values), 1),
        "flat": (max(values) - min(values)) <= 0.1 * min(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--frames", type=int, default=480, help="strong scaling: frames for every N"
    )
    parser.add_argument(
        "--frames-per-worker", type=int, default=240, help="weak scaling: frames = this x N"
    )
    parser.add_argument("--overhead-frames", type=int, default=16)
    parser.add_argument("--overhead-reps", type=int, default=5)
    parser.add_argument(
        "--parts", default="scheduling,overhead,memory", help="comma-separated; others kept"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster_scaling.json"))
    args = parser.parse_args()
    parts = args.parts.split(",")
    result = json.loads(args.out.read_text()) if args.out.is_file() and len(parts) < 3 else {}
    result["machine"] = machine()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for part in parts:  # each part records the load it ran under
            load = [round(x, 2) for x in os.getloadavg()]
            if part == "scheduling":
                result[part] = scheduling(root, args.reps, args.frames, args.frames_per_worker)
            elif part == "overhead":
                result[part] = overhead(root, args.overhead_reps, args.overhead_frames)
            elif part == "memory":
                result[part] = memory(root, (16, 64, 256))
            else:
                raise SystemExit(f"--parts: unknown part {part!r}")
            result[part]["load_avg_before"] = load
            result[part]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["not_measured"] = "two workers on one GPU vs one: no GPU on this machine"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in parts}, indent=2))


if __name__ == "__main__":
    main()
