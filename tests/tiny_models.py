"""Tiny model folders for tests: trained for a couple of steps on synthetic data (the real
training path), or random weights (no training), optionally exported to ONNX / FP16 ONNX.
Imports torch and onnx lazily, so test modules can importorskip first."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cyclesr_deploy.model import ONNX_FILES


def train_tiny_model(
    root: Path,
    *,
    onnx: bool = False,
    fp16: bool = False,
    size: int = 64,
    n_images: int = 4,
    n_test: int = 0,
    seed: int = 4,
    **overrides: Any,
) -> Path:
    """Train a ngf-4, 1-block CycleGAN for 2 steps under ``root``; return its model folder
    (``root/model``; the synthetic data, with ``n_test`` paired test images, is ``root/d``).

    ``overrides`` are dotted TrainConfig keys (``{"optim.steps": 3}``) passed as keywords with
    ``__`` for dots, e.g. ``optim__steps=3``.
    """
    from cyclesr_deploy.synthetic import SynthConfig, generate_dataset
    from cyclesr_deploy.training.config import load_train_config
    from cyclesr_deploy.training.trainer import train

    root = Path(root)
    data = SynthConfig(size=size, seed=seed)
    generate_dataset(root / "d", data, n_train=n_images, n_test=n_test)
    settings = {
        "out": str(root / "model"),
        "data.train_a": str(root / "d" / "trainA"),
        "data.train_b": str(root / "d" / "trainB"),
        "data.crop": 32,
        "data.batch_size": 2,
        "optim.steps": 2,
        "checkpoint_every": 100,
        "generator.ngf": 4,
        "generator.n_blocks": 1,
        "discriminator.ndf": 4,
        **{k.replace("__", "."): v for k, v in overrides.items()},
    }
    folder = train(load_train_config(None, settings)).model_dir
    if onnx or fp16:
        export_tiny_model(folder, fp16=fp16)
    return folder


def export_tiny_model(folder: Path, *, fp16: bool = False) -> Path:
    """Export ``folder`` to generator.onnx (dynamo when onnxscript is present) with a quick
    parity check, and optionally generator.fp16.onnx."""
    from cyclesr_deploy.export import fp16_onnx_from_onnx, onnx_from_checkpoint

    dynamo = importlib.util.find_spec("onnxscript") is not None
    onnx_from_checkpoint(folder, dynamo=dynamo, parity_sizes=[(1, 64, 64)], synthetic_sizes=[])
    if fp16:
        fp16_onnx_from_onnx(folder / ONNX_FILES["ab"])
    return folder
