"""End-to-end ``enhance_files`` vs the engine alone, ONNX Runtime CPU, on a small trained model.

    python benchmarks/enhance_speed.py [--frames 8] [--size 512] [--repeats 5] [--out FILE]

A small generator (``--ngf``, ``--blocks``) is trained for a few steps on synthetic data in a
temporary folder and exported to ONNX (``onnx_from_checkpoint``). On a uint16 stack of
``--frames`` synthetic ``--size``² frames, for each tiling:

* ``end_to_end_s``: ``enhance_files`` on the stack (TIFF read, normalization, tiling, engine,
  blending, mapping back to uint16, OME-TIFF write, manifest), a fresh output folder each time;
* ``engine_only_s``: ``FrameRunner.infer`` over the *same* tile batches (built beforehand by
  the runner the pipeline uses; checked against the shapes the engine saw in the pipeline).

Both are timed round-robin in the same run (one warm-up round, then ``--repeats`` rounds);
medians are reported with their ratio (target: end-to-end within 10 % of engine-only).

Also measured: the InstanceNorm tiling effect, PSNR(tiled, whole frame) in the generator's
output units (range [-1, 1], data range 2) on the first frame, for the default tiling and two
smaller tiles (overlap from the receptive field, cosine blend). A tile >= the frame is one
tile, so the default tiling of a 512² frame equals whole-frame inference (PSNR inf).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine
from _models import train_small_model

from cyclesr_deploy.bench.latency import engine_batches
from cyclesr_deploy.engines import open_engine
from cyclesr_deploy.model import ModelConfig, load_model
from cyclesr_deploy.normalization import IntensityMapping
from cyclesr_deploy.runtime.pipeline import EnhanceConfig, enhance_files
from cyclesr_deploy.runtime.runner import FrameRunner
from cyclesr_deploy.runtime.tiling import TiledPredictor, plan_tiles


def train_tiny(root: Path, ngf: int, blocks: int, steps: int) -> Path:
    return train_small_model(root, ngf, blocks, steps, fp16=False)


def synthetic_stack(root: Path, frames: int, size: int) -> np.ndarray:
    """``frames`` synthetic LR microscopy frames (uint16) of size x size."""
    from cyclesr_deploy.synthetic import SynthConfig, generate_dataset

    generate_dataset(root / "s", SynthConfig(size=size, seed=11), n_train=frames, n_test=0)
    files = sorted((root / "s" / "trainA").glob("*.tif"))[:frames]
    return np.stack([tifffile.imread(f) for f in files]).astype(np.uint16)


def pipeline_batches(runner: FrameRunner, stack: np.ndarray) -> list:
    """The (work, batch) pairs ``enhance_files`` hands the engine for ``stack``."""
    return [pair for frame in stack for pair in engine_batches(runner, frame)]


class Recorder:
    """Engine wrapper that records the input shapes (used once, outside the timed runs)."""

    def __init__(self, engine) -> None:
        self.engine, self.name, self.input_spec = engine, engine.name, engine.input_spec
        self.shapes: list[tuple[int, ...]] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(tuple(batch.shape))
        return self.engine.infer(batch)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def tiling_effect(engine, model: ModelConfig, frame: np.ndarray, tiles: list[int]) -> dict:
    """PSNR (dB) and max |diff| of tiled vs whole-frame output, in the generator's units."""
    x = IntensityMapping.from_config(model.normalization).before(frame)[None]
    whole = np.array(engine.infer(x[None])[0], copy=True)
    rows = {}
    for tile in tiles:
        cfg = EnhanceConfig(tile=tile).tiling(model)
        tiled = TiledPredictor(engine.infer, cfg)(x)
        n_tiles = len(plan_tiles(frame.shape, cfg).tiles)
        value = psnr(tiled, whole, 2.0)
        rows[f"tile_{tile}"] = {
            "tiles": n_tiles,
            "overlap": cfg.overlap,
            "halo": cfg.halo,
            "psnr_db": round(value, 2) if math.isfinite(value) else "inf (one tile: identical)",
            "max_abs": float(np.abs(tiled - whole).max()),
        }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--ngf", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results/enhance_speed.json"
    )
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cyclesr-enhance-bench-"))
    try:
        t0 = time.perf_counter()
        model_dir = train_tiny(root, args.ngf, args.blocks, args.steps)
        print(f"trained + exported in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        model = load_model(model_dir)
        stack = synthetic_stack(root, args.frames, args.size)
        src = root / "in" / "stack.ome.tif"
        src.parent.mkdir()
        tifffile.imwrite(src, stack, ome=True, photometric="minisblack", metadata={"axes": "TYX"})
        configs = {
            "default_tile_512": EnhanceConfig(overwrite=True),
            # a 512^2 frame fits the auto whole-frame budget: --whole-max-px 0 makes it tile
            "tile_256": EnhanceConfig(tile=256, whole_max_px=0, overwrite=True),
        }
        results: dict[str, dict] = {}
        with open_engine(model_dir, backend="onnxruntime", device="cpu") as engine:
            selection = str(getattr(engine, "selection", ""))
            for name, cfg in configs.items():
                runner = FrameRunner(engine, model, cfg)
                batches = pipeline_batches(runner, stack)
                rec = Recorder(engine)
                enhance_files([src], root / "check", rec, model, cfg)
                want = [b.data[: len(b.tiles)].shape for _, b in batches]
                assert rec.shapes == want, (rec.shapes, want)
                times: dict[str, list[float]] = {"end_to_end": [], "engine_only": []}
                for r in range(args.repeats + 1):  # round 0: warm-up
                    out = root / f"out-{name}-{r}"
                    start = time.perf_counter()
                    summary = enhance_files([src], out, engine, model, cfg)
                    e2e = time.perf_counter() - start
                    assert summary.ok and summary.frames == args.frames
                    start = time.perf_counter()
                    for work, b in batches:
                        runner.infer(work, b)
                    only = time.perf_counter() - start
                    shutil.rmtree(out)
                    if r:
                        times["end_to_end"].append(e2e)
                        times["engine_only"].append(only)
                e2e_s = statistics.median(times["end_to_end"])
                only_s = statistics.median(times["engine_only"])
                mpx = args.frames * args.size**2 / 1e6
                results[name] = {
                    "tile": cfg.tile,
                    "overlap": cfg.tiling(model).overlap,
                    "batch": cfg.batch,
                    "engine_calls": len(batches),
                    "tiles_per_frame": len(runner.plan(stack.shape[-2:]).tiles.tiles),
                    "plan": runner.plan(stack.shape[-2:]).mode,
                    "end_to_end_s": round(e2e_s, 4),
                    "engine_only_s": round(only_s, 4),
                    "ratio": round(e2e_s / only_s, 3),
                    "ratio_of_minima": round(
                        min(times["end_to_end"]) / min(times["engine_only"]), 3
                    ),
                    "end_to_end_frames_per_s": round(args.frames / e2e_s, 2),
                    "end_to_end_mpx_per_s": round(mpx / e2e_s, 2),
                    "all_end_to_end_s": [round(t, 4) for t in times["end_to_end"]],
                    "all_engine_only_s": [round(t, 4) for t in times["engine_only"]],
                }
                print(
                    f"{name:18s} end-to-end {e2e_s:.3f} s  engine-only {only_s:.3f} s  "
                    f"ratio {e2e_s / only_s:.3f}",
                    file=sys.stderr,
                )
            effect = tiling_effect(engine, model, stack[0], [512, 256, 128])
            for key, row in effect.items():
                print(f"IN tiling effect {key}: {row}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report = {
        "benchmark": "enhance_speed",
        "machine": {
            **machine(),
            "numpy": np.__version__,
            "onnxruntime": _version("onnxruntime"),
            "tifffile": tifffile.__version__,
            "load_average_1min": os.getloadavg()[0],  # other processes share the cores
        },
        "settings": {
            "stack": [args.frames, args.size, args.size],
            "dtype": "uint16",
            "model": {
                "ngf": args.ngf,
                "n_blocks": args.blocks,
                "train_steps": args.steps,
                "receptive_field": model.receptive_field,
                "norm": model.generator.norm,
            },
            "engine": selection,
            "repeats": args.repeats,
            "statistic": "median of round-robin repeats (end-to-end, then engine-only on the "
            "same tile batches) after one warm-up round; ratio = end-to-end / engine-only "
            "medians; ratio_of_minima (less sensitive to other load on the machine) as well",
        },
        "results": results,
        "instance_norm_tiling_effect": {
            "what": "PSNR(tiled, whole frame) of the generator output ([-1, 1], data range 2) "
            f"on one {args.size}x{args.size} synthetic frame; cosine blend, overlap and halo "
            "from the receptive field (TilingConfig.for_model)",
            **effect,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
