"""Training speed (steps/s) of the CycleGAN trainer on synthetic data, per configuration.

    python benchmarks/train_speed.py [--steps 12] [--warmup 3] [--device cpu] [--out FILE]

Each configuration trains on the same synthetic set; the first ``warmup`` steps are dropped and
the median step time of the rest is reported (with min and max). Configurations:

* ``small``: the default CPU model (ngf 32, 6 blocks, PatchGAN ndf 32), 128 px crops, batch 4,
  canonical L1 cycle/identity losses;
* ``small_paper_vgg``: the same with the paper's preset (VGG19 relu5_4 perceptual cycle and
  identity terms; random VGG weights, which cost the same as ImageNet ones);
* ``canonical``: resnet_9blocks ngf 64 + 70x70 PatchGAN ndf 64, 256 px crops, batch 1 (the
  CycleGAN paper's setting).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine

CONFIGS = {
    "small": {"data.crop": 128, "data.batch_size": 4},
    "small_paper_vgg": {
        "data.crop": 128,
        "data.batch_size": 4,
        "loss_preset": "paper",
        "perceptual_weights": "random",
    },
    "canonical": {
        "data.crop": 256,
        "data.batch_size": 1,
        "generator.ngf": 64,
        "generator.n_blocks": 9,
        "discriminator.ndf": 64,
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results/train_speed.json")
    args = ap.parse_args()

    from cyclesr_deploy.nets import count_parameters
    from cyclesr_deploy.synthetic import SynthConfig, generate_dataset
    from cyclesr_deploy.training.config import load_train_config
    from cyclesr_deploy.training.trainer import _Run

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_dataset(data, SynthConfig(size=256, seed=0), n_train=16, n_test=0)
        for name in args.configs:
            overrides = {
                "out": str(Path(tmp) / name),
                "data.train_a": str(data / "trainA"),
                "data.train_b": str(data / "trainB"),
                "device": args.device,
                **CONFIGS[name],
            }
            cfg = load_train_config(None, overrides)
            run = _Run(cfg)
            times = []
            for _ in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                run.train_step()
                if run.device.type == "cuda":
                    import torch

                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            timed = times[args.warmup :]
            med = statistics.median(timed)
            results[name] = {
                "settings": {
                    k: v for k, v in overrides.items() if not k.startswith(("out", "data.train"))
                },
                "generator_parameters": count_parameters(run.g_ab),
                "discriminator_parameters": count_parameters(run.d_b),
                "step_s_median": round(med, 4),
                "step_s_min": round(min(timed), 4),
                "step_s_max": round(max(timed), 4),
                "steps_per_s": round(1 / med, 3),
                "steps_per_hour": round(3600 / med),
                "timed_steps": len(timed),
            }
            print(f"{name}: {med:.3f} s/step ({1 / med:.2f} steps/s)", file=sys.stderr)
    payload = {"benchmark": "train_speed", "machine": machine(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
