"""Regenerate the README's latency table with ``cyclesr bench latency``.

    python benchmarks/latency_table.py [--frame-size 512] [--tile 192 --tile 256] [--repeats 8]

A small CycleGAN (``--ngf``, ``--blocks``) is trained for a few steps on synthetic data in a
temporary folder and exported to FP32 and FP16 ONNX; then ``cyclesr bench latency`` runs on it
for ONNX Runtime and PyTorch (the CPU backends; add ``--backend tensorrt`` on a GPU machine)
x FP32/FP16 x the tiles, whole frame included. Writes ``results/latency.json`` and
``results/latency.md`` (the table pasted into the README) and prints the table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import train_small_model

RESULTS = Path(__file__).resolve().parent / "results"


def train_tiny(root: Path, ngf: int, blocks: int, steps: int) -> Path:
    return train_small_model(root, ngf, blocks, steps, fp16=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="An exported model folder (default: train one).")
    ap.add_argument("--ngf", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frame-size", type=int, default=512)
    ap.add_argument("--tile", type=int, action="append", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--backend", action="append", default=None)
    ap.add_argument("--precision", action="append", default=None)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="latency-table-") as tmp:
        root = Path(tmp)
        model = args.model or train_tiny(root, args.ngf, args.blocks, args.steps)
        cmd = [sys.executable, "-m", "cyclesr_deploy", "bench", "latency", str(model)]
        for b in args.backend or ["onnxruntime", "torch"]:
            cmd += ["--backend", b]
        for p in args.precision or ["fp32", "fp16"]:
            cmd += ["--precision", p]
        for t in args.tile or [192, 256]:
            cmd += ["--tile", str(t)]
        cmd += ["--whole-frame", "--batch", str(args.batch), "--frame-size", str(args.frame_size)]
        cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        cmd += ["-o", str(root / "out")]
        subprocess.run(cmd, check=True)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("latency.json", "latency.md"):
            shutil.copyfile(root / "out" / name, args.out / name)
    print((args.out / "latency.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
