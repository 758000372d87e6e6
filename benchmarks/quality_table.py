"""Regenerate the README's quality table with ``cyclesr bench quality``.

    python benchmarks/quality_table.py [--size 128] [--n-test 4] [--steps 300]

A paired synthetic test set (``generate_dataset``: testA = LR, testB = HR, same ground truth),
a small CycleGAN trained on its unpaired train split and a supervised model trained on paired
samples of a disjoint seed, both for ``--steps`` steps (smoke-scale models: their numbers show
the table, not the method's quality; pass ``--model NAME=DIR`` for real models, repeatable),
then ``cyclesr bench quality`` on them. Writes ``results/quality.json`` and
``results/quality.md`` (the README table) and prints the table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    from cyclesr_deploy.export import onnx_from_checkpoint
    from cyclesr_deploy.synthetic import SynthConfig, generate_dataset
    from cyclesr_deploy.training.config import load_train_config
    from cyclesr_deploy.training.trainer import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ngf", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--model", action="append", default=None, help="NAME=DIR, repeatable.")
    ap.add_argument("--figure", type=Path, default=None, help="Also keep figure.png here.")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="quality-table-") as tmp:
        root = Path(tmp)
        data = root / "d"
        generate_dataset(data, SynthConfig(size=args.size, seed=7), args.n_train, args.n_test)
        models = args.model
        if not models:
            base = {
                "out": str(root / "m"),
                "data.train_a": str(data / "trainA"),
                "data.train_b": str(data / "trainB"),
                "data.crop": 64,
                "data.batch_size": 2,
                "optim.steps": args.steps,
                "checkpoint_every": 10**6,
                "generator.ngf": args.ngf,
                "generator.n_blocks": args.blocks,
                "discriminator.ndf": 8,
            }
            cfg = load_train_config(None, base)
            model_dir = train(cfg).model_dir
            onnx_from_checkpoint(model_dir, parity_sizes=[(1, 64, 64)], synthetic_sizes=[])
            models = [f"cyclegan-{args.steps}steps={model_dir}"]
            # supervised baseline: paired training pairs from a disjoint seed (not the test set)
            pairs = root / "p"
            generate_dataset(pairs, SynthConfig(size=args.size, seed=8), 0, args.n_train)
            sup = load_train_config(
                None,
                {
                    **base,
                    "mode": "supervised",
                    "out": str(root / "s"),
                    "data.train_a": str(pairs / "testA"),
                    "data.train_b": str(pairs / "testB"),
                },
            )
            sup_dir = train(sup).model_dir
            onnx_from_checkpoint(sup_dir, parity_sizes=[(1, 64, 64)], synthetic_sizes=[])
            models.append(f"supervised-{args.steps}steps={sup_dir}")
        cmd = [sys.executable, "-m", "cyclesr_deploy", "bench", "quality"]
        cmd += ["--lr", str(data / "testA"), "--hr", str(data / "testB")]
        for m in models:
            cmd += ["--model", m]
        cmd += ["-o", str(root / "out")]
        subprocess.run(cmd, check=True)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("quality.json", "quality.md"):
            shutil.copyfile(root / "out" / name, args.out / name)
        if args.figure:
            shutil.copyfile(root / "out" / "figure.png", args.figure)
    print((args.out / "quality.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
