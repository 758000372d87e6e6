"""A small trained + exported model for the benchmark scripts (benchmarks cannot import tests)."""

from __future__ import annotations

from pathlib import Path

from cyclesr_deploy.model import ONNX_FILES


def train_small_model(root: Path, ngf: int, blocks: int, steps: int, *, fp16: bool = False) -> Path:
    """Train a small CycleGAN for ``steps`` steps on synthetic data; export FP32 (and FP16) ONNX."""
    from cyclesr_deploy.export import fp16_onnx_from_onnx, onnx_from_checkpoint
    from cyclesr_deploy.synthetic import SynthConfig, generate_dataset
    from cyclesr_deploy.training.config import load_train_config
    from cyclesr_deploy.training.trainer import train

    generate_dataset(root / "d", SynthConfig(size=128, seed=4), n_train=8, n_test=0)
    cfg = load_train_config(
        None,
        {
            "out": str(root / "m"),
            "data.train_a": str(root / "d" / "trainA"),
            "data.train_b": str(root / "d" / "trainB"),
            "data.crop": 64,
            "data.batch_size": 2,
            "optim.steps": steps,
            "generator.ngf": ngf,
            "generator.n_blocks": blocks,
            "discriminator.ndf": 8,
        },
    )
    model_dir = train(cfg).model_dir
    onnx_from_checkpoint(model_dir, parity_sizes=[(1, 64, 64)], synthetic_sizes=[])
    if fp16:
        fp16_onnx_from_onnx(model_dir / ONNX_FILES["ab"])
    return model_dir
