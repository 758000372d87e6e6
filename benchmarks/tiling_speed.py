"""Tiling + blending throughput (Mpx/s, one core) with an identity predictor, vs MONAI.

    OMP_NUM_THREADS=1 python benchmarks/tiling_speed.py [--size 2048] [--repeats 11] [--out FILE]

An identity ``predict`` isolates the tiler's own cost (gather, blend, crop) on a 2048x2048
float32 frame, tile 512, overlap 64 and 128. All rows of one overlap are timed round-robin
(one run of each per round, ``repeats`` rounds after 2 warm-up rounds); medians reported:

* ``ours_<blend>``: ``TiledPredictor`` (plan cached, buffers and output reused), cosine with a
  16-px halo, gaussian, crop; ``_new_output``: a new output array per frame (as MONAI does);
* ``ours_uint16_<blend>``: uint16 frame -> float32 in [-1, 1] -> tiles -> back to uint16 (clip,
  round), i.e. the runtime's per-frame CPU work around the engine;
* ``runner_uint16_cosine``: the same uint16 round trip through the runtime's own
  :class:`~cyclesr_deploy.runtime.runner.FrameRunner` (what ``cyclesr enhance``, ``watch`` and
  ``Enhancer`` run per frame) with an identity engine, for a model without InstanceNorm (tiles,
  cosine blend, halo from the overlap, a new output per frame);
* ``monai_gaussian``: MONAI ``sliding_window_inference(mode="gaussian")`` at the same roi and
  overlap (5 x 5 windows at both overlaps, as ours), torch with one thread (benchmark-only
  dependency: ``pip install monai``; skipped if missing); ``monai_uint16_gaussian`` adds the
  same uint16 mapping around it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch load their thread pools

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine

from cyclesr_deploy.engines.base import TensorSpec
from cyclesr_deploy.model import GeneratorConfig, ModelConfig, NormalizationConfig
from cyclesr_deploy.runtime.runner import EnhanceConfig, FrameRunner
from cyclesr_deploy.runtime.tiling import TiledPredictor, TilingConfig

LOW, HIGH = 0.0, 65535.0  # uint16 -> [-1, 1] mapping (the model's fixed normalization)


def _interleaved(
    runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Median/min/max seconds of each run, timed round-robin (one of each per round) so that
    load from other processes affects every row alike."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
        for name, t in times.items()
    }


class Uint16Mapping:
    """uint16 <-> float32 [-1, 1] with preallocated buffers (what the runtime does per frame)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.x = np.empty(shape, np.float32)
        self.y = np.empty(shape, np.float32)
        self.u16 = np.empty(shape, np.uint16)
        self.a = np.float32(2.0 / (HIGH - LOW))
        self.b = np.float32(-2.0 * LOW / (HIGH - LOW) - 1.0)

    def before(self, frame: np.ndarray) -> np.ndarray:
        np.multiply(frame, self.a, out=self.x)
        np.add(self.x, self.b, out=self.x)
        return self.x

    def after(self, y: np.ndarray) -> np.ndarray:
        np.multiply(y, np.float32((HIGH - LOW) / 2), out=y)
        np.add(y, np.float32((HIGH - LOW) / 2 + LOW), out=y)
        np.clip(y, 0, 65535, out=y)
        np.rint(y, out=y)
        np.copyto(self.u16, y, casting="unsafe")
        return self.u16


def identity(batch: np.ndarray) -> np.ndarray:
    return batch


class IdentityEngine:
    """An Engine that returns its input (the tiler's and runner's own cost only)."""

    name = "identity"
    input_spec = TensorSpec(
        name="input",
        shape=(None, 1, None, None),
        dtype=np.dtype(np.float32),
        size_multiple=4,
        scale=1,
    )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return batch


def frame_runner(tile: int, overlap: int) -> FrameRunner:
    model = ModelConfig(
        generator=GeneratorConfig(ngf=4, n_blocks=0, norm="none"),
        normalization=NormalizationConfig(low_a=LOW, high_a=HIGH, low_b=LOW, high_b=HIGH),
    )
    cfg = EnhanceConfig(tile=tile, overlap=overlap, blend="cosine", batch=4)
    return FrameRunner(IdentityEngine(), model, cfg)  # type: ignore[arg-type]


def _monai_version() -> str | None:
    try:
        import monai
    except ImportError:
        return None
    return monai.__version__


def measure(
    frame: np.ndarray, frame_u16: np.ndarray, tile: int, overlap: int, repeats: int
) -> dict[str, dict[str, float]]:
    """All rows for one overlap, measured back to back."""
    runs: dict[str, Callable[[], object]] = {}
    blends = {
        "cosine": TilingConfig(tile=tile, overlap=overlap, blend="cosine", halo=16),
        "gaussian": TilingConfig(tile=tile, overlap=overlap, blend="gaussian"),
        "crop": TilingConfig(tile=tile, overlap=overlap, blend="crop"),
    }
    out = np.empty_like(frame)
    mapping = Uint16Mapping(frame.shape)
    for name, cfg in blends.items():
        tiled = TiledPredictor(identity, cfg)
        assert np.abs(tiled(frame) - frame).max() <= 1e-6

        def end_to_end(tiled: TiledPredictor = tiled) -> np.ndarray:
            return mapping.after(tiled(mapping.before(frame_u16), out=mapping.y))

        assert np.array_equal(end_to_end(), frame_u16)
        runs[f"ours_{name}"] = lambda tiled=tiled: tiled(frame, out=out)
        if name != "crop":  # a new output array per frame, as MONAI allocates
            runs[f"ours_{name}_new_output"] = lambda tiled=tiled: tiled(frame)
        runs[f"ours_uint16_{name}"] = end_to_end
    runner = frame_runner(tile, overlap)
    assert runner.plan(frame_u16.shape[-2:]).mode == "tiles"
    assert np.abs(runner(frame_u16[0]).astype(np.int64) - frame_u16[0]).max() <= 1
    runs["runner_uint16_cosine"] = lambda: runner(frame_u16[0])
    try:
        import torch
        from monai.inferers import sliding_window_inference
    except ImportError as exc:
        print(f"MONAI not available ({exc}); skipping the MONAI rows", file=sys.stderr)
    else:
        torch.set_num_threads(1)

        def monai_run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return sliding_window_inference(
                    x, (tile, tile), 4, identity, overlap=overlap / tile, mode="gaussian"
                )

        def monai_end_to_end() -> np.ndarray:
            y = monai_run(torch.from_numpy(mapping.before(frame_u16)[None]))
            return mapping.after(y[0].numpy())

        x = torch.from_numpy(frame[None])
        assert float((monai_run(x) - x).abs().max()) <= 1e-6
        assert np.array_equal(monai_end_to_end(), frame_u16)
        runs["monai_gaussian"] = lambda: monai_run(x)
        runs["monai_uint16_gaussian"] = monai_end_to_end
    rows = _interleaved(runs, repeats)
    mpx = frame.shape[-2] * frame.shape[-1] / 1e6
    for row in rows.values():
        row["mpx_per_s"] = round(mpx / row["median_s"], 1)
    if "monai_gaussian" in rows:
        for name in rows:
            if name.startswith("ours_") and not name.startswith("ours_uint16"):
                rows[name]["ratio_vs_monai"] = round(
                    rows[name]["mpx_per_s"] / rows["monai_gaussian"]["mpx_per_s"], 2
                )
        for name in [*(f"ours_uint16_{b}" for b in blends), "runner_uint16_cosine"]:
            ours16 = rows[name]
            ours16["ratio_vs_monai_uint16"] = round(
                ours16["mpx_per_s"] / rows["monai_uint16_gaussian"]["mpx_per_s"], 2
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlaps", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results/tiling_speed.json")
    args = ap.parse_args()
    size, tile = args.size, args.tile
    rng = np.random.default_rng(0)
    frame_u16 = rng.integers(0, 65536, (1, size, size), dtype=np.uint16)
    frame = (frame_u16.astype(np.float32) / 32767.5 - 1).astype(np.float32)

    results = {
        f"overlap_{overlap}": measure(frame, frame_u16, tile, overlap, args.repeats)
        for overlap in args.overlaps
    }
    for key, rows in results.items():
        for name, row in rows.items():
            ratio = {k: v for k, v in row.items() if k.startswith("ratio")}
            print(f"{key:12s} {name:24s} {row['mpx_per_s']:8.1f} Mpx/s  {ratio or ''}")

    report = {
        "benchmark": "tiling_speed",
        "machine": {
            **machine(),
            "numpy": np.__version__,
            "monai": _monai_version(),
            "load_average_1min": os.getloadavg()[0],  # other processes share the cores
        },
        "settings": {
            "frame": [size, size],
            "tile": tile,
            "overlaps": args.overlaps,
            "halo_cosine": 16,
            "batch_size": 4,
            "predict": "identity",
            "repeats": args.repeats,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "statistic": "median of round-robin repeats after 2 warm-up rounds; "
            "Mpx/s = input Mpx / median",
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
