"""Frozen-statistics tiling and training on a CUDA GPU (marked ``gpu``, skipped without one).

The CPU suite proves the logic; these check that the same code holds on CUDA, where cuDNN picks
other convolution algorithms per shape and TF32 may be on: whole-frame statistics still make the
tiled output equal whole-frame inference, and a training run with mixed precision (AMP) stays
finite and resumes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cyclesr_deploy.engines import select as sel
from cyclesr_deploy.model import GeneratorConfig
from cyclesr_deploy.runtime.tiling import TilingConfig

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch_cuda():
    if sel.cuda_device_count() == 0:
        pytest.skip("no CUDA device")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


@pytest.fixture
def no_tf32(torch_cuda):
    """Exact FP32 convolutions: TF32 rounds differently per algorithm, i.e. per tile shape."""
    before = torch_cuda.backends.cudnn.allow_tf32, torch_cuda.backends.cuda.matmul.allow_tf32
    cudnn = torch_cuda.backends.cudnn
    torch_cuda.backends.cudnn.allow_tf32 = torch_cuda.backends.cuda.matmul.allow_tf32 = False
    benchmark, cudnn.benchmark = cudnn.benchmark, False
    yield
    torch_cuda.backends.cudnn.allow_tf32, torch_cuda.backends.cuda.matmul.allow_tf32 = before
    cudnn.benchmark = benchmark


def _frame(size: int, seed: int = 3) -> np.ndarray:
    from cyclesr_deploy.synthetic import SynthConfig, simulate_pair

    pair = simulate_pair(SynthConfig(size=size, seed=seed))
    lr = pair.lr.astype(np.float32)
    lo, hi = np.percentile(lr, (0.1, 99.9))
    return (2 * (lr - lo) / (hi - lo) - 1).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # range [-1, 1]


@pytest.mark.parametrize("size", [1024, 2048])
def test_whole_frame_statistics_make_cuda_tiling_exact(torch_cuda, no_tf32, size):
    """Tiled (halo >= receptive-field half-width) with whole-frame statistics vs whole frame,
    both on CUDA in FP32 without TF32: within 1e-4, as on the CPU; naive tiling is reported."""
    torch = torch_cuda
    from cyclesr_deploy.engines.frozen_torch import predict_tiled_frozen
    from cyclesr_deploy.nets import build_generator

    gen_cfg = GeneratorConfig()  # canonical ngf 64, 9 blocks, random weights
    net = build_generator(gen_cfg, generator=torch.Generator().manual_seed(0)).eval()
    x = _frame(size)
    with torch.inference_mode():
        whole_cpu = net(torch.from_numpy(x)[None, None])[0, 0].numpy() if size <= 1024 else None
        net = net.cuda()
        whole = net(torch.from_numpy(x)[None, None].cuda())[0, 0].float().cpu().numpy()
    cfg = TilingConfig.for_model(gen_cfg.receptive_field, tile=512, batch_size=4)
    frozen = predict_tiled_frozen(net, x, cfg, stats="whole")
    naive = predict_tiled_frozen(net, x, cfg, stats="tile")
    err = float(np.abs(frozen - whole).max())
    device_err = 0.0 if whole_cpu is None else float(np.abs(whole - whole_cpu).max())
    print(
        f"\n{size}^2 CUDA canonical random: frozen vs whole max abs {err:.2e} "
        f"(whole CUDA vs CPU {device_err:.2e}), PSNR frozen {_psnr(frozen, whole):.1f} dB, "
        f"naive {_psnr(naive, whole):.1f} dB"
    )
    assert err <= 1e-4
    assert _psnr(naive, whole) < 45


def test_torch_frozen_engine_on_cuda_matches_cpu(torch_cuda, no_tf32, tmp_path):
    torch = torch_cuda
    from cyclesr_deploy.engines.frozen import TorchFrozenEngine
    from cyclesr_deploy.model import WEIGHTS, ModelConfig, save_model_config
    from cyclesr_deploy.nets import build_generator

    gen = GeneratorConfig(ngf=16, n_blocks=3)
    save_model_config(tmp_path, ModelConfig(generator=gen))
    torch.save(
        build_generator(gen, generator=torch.Generator().manual_seed(1)).state_dict(),
        tmp_path / WEIGHTS["ab"],
    )
    frame = _frame(256)[None, None]
    tiles = np.ascontiguousarray(frame[..., :128, :128].repeat(2, axis=0))
    results = {}
    for device in ("cpu", "cuda"):
        with TorchFrozenEngine(tmp_path, device=device) as engine:
            stats = engine.frame_statistics(frame)
            results[device] = (stats.copy(), engine.infer_with_stats(tiles, stats).copy())
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], atol=1e-4)


def test_training_with_amp_on_cuda_is_finite_and_resumes(torch_cuda, tmp_path):
    pytest.importorskip("yaml")
    import csv

    from cyclesr_deploy.synthetic import SynthConfig, generate_dataset
    from cyclesr_deploy.training.config import load_train_config
    from cyclesr_deploy.training.trainer import train

    data = tmp_path / "d"
    generate_dataset(data, SynthConfig(size=96, seed=5), n_train=8, n_test=2)
    base = {
        "out": str(tmp_path / "m"),
        "data.train_a": str(data / "trainA"),
        "data.train_b": str(data / "trainB"),
        "data.val_a": str(data / "testA"),
        "data.val_b": str(data / "testB"),
        "data.crop": 64,
        "data.batch_size": 4,
        "optim.steps": 8,
        "checkpoint_every": 4,
        "val_every": 4,
        "log_every": 1,
        "device": "cuda",
        "amp": True,
        "generator.ngf": 8,
        "generator.n_blocks": 2,
        "discriminator.ndf": 8,
    }
    train(load_train_config(None, base), stop_after=4)
    result = train(load_train_config(None, base), resume=True)
    assert result.model_dir.is_dir()
    with (result.model_dir / "train_log.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r.get("step")]
    assert max(steps) == 8
    for row in rows:
        for key, value in row.items():
            if not key.startswith("val_") and key not in ("step", "seconds") and value:
                assert math.isfinite(float(value)), (key, row)
