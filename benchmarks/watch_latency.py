"""``cyclesr watch`` under load: latency arrival -> written, backlog, frames processed.

    python benchmarks/watch_latency.py [--out benchmarks/results/watch_latency.json]

A writer process (spawned) writes uint16 frame files (``--size``², shaped TIFF) into a
folder at a fixed rate, each file in 4 chunks; :func:`cyclesr_deploy.runtime.watch.watch_folder`
enhances them with a fixed-cost engine (``--engine-ms`` of sleep per call, identity output,
numpy only), so the numbers measure the watch machinery (scan, completeness wait, TIFF read,
tiling/mapping, atomic write, manifest) around an engine of known speed. Scenarios:

* ``fast_writer_queue`` / ``fast_writer_latest``: the writer is faster than the engine can
  keep up with (``--fast-period``); policy ``queue`` (everything, backlog grows) and
  ``latest`` (newest first, older waiting frames skipped and recorded);
* ``slow_writer_queue``: the writer is slower than the engine (``--slow-period``). Check:
  p95 latency <= 1.5 x the single-frame processing time + the completeness wait (``stable``).

Latency: ``latency_s`` is watch's own figure (from the moment the file's last bytes were
observed to the output being renamed into place); ``from_writer_s`` starts when the writer
closed the file (adds up to one ``poll`` of detection). ``single_frame_s``: median of
read + enhance + write of one frame, measured alone beforehand.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.runtime.pipeline import EnhanceConfig
from cyclesr_deploy.runtime.runner import FrameRunner
from cyclesr_deploy.runtime.tiff import open_frames, output_info, write_frames
from cyclesr_deploy.runtime.watch import WatchConfig, watch_folder


class SleepEngine:
    """Identity output after ``seconds`` of sleep per call: an engine of known cost."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.name = f"sleep[{seconds * 1000:.0f} ms/call]"
        self.input_spec = TensorSpec("input", (None, 1, None, None), np.dtype(np.float32), 4, 1)

    def __enter__(self) -> SleepEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def infer(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return batch


def _model() -> ModelConfig:
    return ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, scale=1),
        normalization=NormalizationConfig(low_a=0, high_a=65535, low_b=0, high_b=65535),
    )


def _writer(folder: str, n: int, period: float, size: int, times_path: str) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 60000, (size, size)).astype(np.uint16)
    b = io.BytesIO()
    tifffile.imwrite(b, frame, photometric="minisblack")
    data = b.getvalue()
    step = -(-len(data) // 4)
    ends = {}
    t_next = time.perf_counter()
    for i in range(n):
        name = f"frame{i:05d}.tif"
        with (Path(folder) / name).open("wb") as fh:
            for k in range(0, len(data), step):
                fh.write(data[k : k + step])
                fh.flush()
                time.sleep(0.002)
        ends[name] = time.time()
        t_next += period
        time.sleep(max(0.0, t_next - time.perf_counter()))
    Path(times_path).write_text(json.dumps(ends))


def single_frame_s(size: int, engine_s: float, cfg: EnhanceConfig, tmp: Path) -> float:
    src = tmp / "single.tif"
    tifffile.imwrite(src, np.ones((size, size), np.uint16), photometric="minisblack")
    proc = FrameRunner(SleepEngine(engine_s), _model(), cfg)
    times = []
    for i in range(7):
        t0 = time.perf_counter()
        with open_frames(src) as r:
            info, frame = r.info, r.read(0)
        write_frames(tmp / f"o{i}.tif", output_info(info), [proc(frame)], overwrite=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def scenario(
    tmp: Path, n: int, period: float, policy: str, args: argparse.Namespace
) -> dict[str, object]:
    folder = tmp / f"{policy}-{period}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "in").mkdir(parents=True)
    times_path = folder / "writer_times.json"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_writer, args=(str(folder / "in"), n, period, args.size, str(times_path))
    )
    cfg = WatchConfig(
        poll=args.poll, stable=args.stable, when_behind=policy, use_events=False, queue_size=1000
    )
    written: dict[str, float] = {}
    latencies: list[float] = []
    backlog: list[int] = []
    last: dict[str, object] = {}
    stop = threading.Event()

    def on_status(st) -> None:
        backlog.append(st.queued)
        last["st"] = st

    def on_frame(path: Path, _page: int, latency: float) -> None:
        written[path.name] = time.time()
        latencies.append(latency)

    def stopper() -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            st = last.get("st")
            if not proc.is_alive() and st is not None and st.done + st.skipped >= n:
                break
            time.sleep(0.05)
        stop.set()

    proc.start()
    threading.Thread(target=stopper, daemon=True).start()
    t0 = time.perf_counter()
    final = watch_folder(
        folder / "in",
        folder / "out",
        SleepEngine(args.engine_ms / 1000),
        _model(),
        cfg,
        EnhanceConfig(tile=args.tile),
        stop=stop,
        on_status=on_status,
        status_every=0.05,
        on_frame=on_frame,
    )
    wall = time.perf_counter() - t0
    proc.join(10)
    ends = json.loads(times_path.read_text())
    from_writer = [written[k] - ends[k] for k in written if k in ends]
    lat = np.array(latencies)
    fw = np.array(from_writer)
    return {
        "policy": policy,
        "writer_period_s": period,
        "writer_fps": round(1 / period, 2),
        "frames_written": n,
        "frames_processed": final.done,
        "frames_skipped": final.skipped,
        "frames_failed": final.failed,
        "latency_s": {
            "p50": round(float(np.percentile(lat, 50)), 4),
            "p95": round(float(np.percentile(lat, 95)), 4),
            "max": round(float(lat.max()), 4),
        },
        "from_writer_s": {
            "p50": round(float(np.percentile(fw, 50)), 4),
            "p95": round(float(np.percentile(fw, 95)), 4),
        },
        "backlog_max": max(backlog) if backlog else 0,
        "processed_fps": round(final.done / wall, 2),
        "wall_s": round(wall, 2),
        "part_files_left": len(list((folder / "out").glob("*.part"))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tile", type=int, default=0)
    ap.add_argument("--engine-ms", type=float, default=50.0)
    ap.add_argument("--poll", type=float, default=0.02)
    ap.add_argument("--stable", type=float, default=0.2)
    ap.add_argument("--fast-period", type=float, default=0.02)
    ap.add_argument("--fast-frames", type=int, default=60)
    ap.add_argument("--slow-period", type=float, default=0.25)
    ap.add_argument("--slow-frames", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/watch_latency.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cyclesr-watch-bench-"))
    try:
        ecfg = EnhanceConfig(tile=args.tile)
        single = single_frame_s(args.size, args.engine_ms / 1000, ecfg, tmp)
        results = {
            "fast_writer_queue": scenario(tmp, args.fast_frames, args.fast_period, "queue", args),
            "fast_writer_latest": scenario(tmp, args.fast_frames, args.fast_period, "latest", args),
            "slow_writer_queue": scenario(tmp, args.slow_frames, args.slow_period, "queue", args),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bound = 1.5 * single + args.stable
    p95 = results["slow_writer_queue"]["latency_s"]["p95"]
    report = {
        "benchmark": "watch_latency",
        "machine": {**machine(), "numpy": np.__version__, "tifffile": tifffile.__version__},
        "settings": {
            "frame": [args.size, args.size],
            "dtype": "uint16",
            "tile": args.tile,
            "engine": f"sleep {args.engine_ms} ms per call (identity), numpy only",
            "poll_s": args.poll,
            "stable_s": args.stable,
            "writer_chunks_per_file": 4,
        },
        "single_frame_s": round(single, 4),
        "results": results,
        "slow_writer_check": {
            "p95_latency_s": p95,
            "bound_s": round(bound, 4),
            "bound": "1.5 x single_frame_s + stable_s",
            "ok": p95 <= bound,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
