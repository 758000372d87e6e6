"""The training loop: CycleGAN (unpaired, two generators, two PatchGANs) or supervised (paired).

``train(config)`` builds everything from a :class:`TrainConfig`, writes a model folder (see
:mod:`cyclesr_deploy.model`) with checkpoints every ``checkpoint_every`` steps, and resumes from
``train_state.pt`` when asked. Deterministic on CPU for a given seed: all randomness comes from
one numpy Generator (data) and two torch Generators (initialisation, image pool), whose states
are saved in every checkpoint, so an interrupted and resumed run equals an uninterrupted one.

The library never prints: progress goes to the ``on_event`` callback (the CLI renders it).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cyclesr_deploy import __version__
from cyclesr_deploy.errors import InputError
from cyclesr_deploy.io import atomic_path
from cyclesr_deploy.model import (
    TRAIN_STATE,
    WEIGHTS,
    ModelConfig,
    NormalizationConfig,
    Provenance,
    save_model_config,
)
from cyclesr_deploy.nets import build_discriminator, build_generator
from cyclesr_deploy.training import data as tdata
from cyclesr_deploy.training.config import TrainConfig
from cyclesr_deploy.training.losses import (
    GeneratorLosses,
    ImagePool,
    LossWeights,
    SupervisedLosses,
    discriminator_loss,
    generator_losses,
    set_requires_grad,
    supervised_losses,
)

log = logging.getLogger("cyclesr_deploy")

TRAIN_CONFIG_FILE = "train_config.yaml"
LOG_FILE = "train_log.csv"
VAL_METRICS = (
    "psnr",
    "ssim",
    "psnr_care",
    "ssim_care",
    "bgstd",
    "cuf_ring_index",
    "decorrelation_resolution_px",
)


@dataclass
class TrainEvent:
    """What the trainer reports: kind is 'start', 'step', 'checkpoint', 'validation' or 'end'."""

    kind: str
    step: int
    total_steps: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    steps_per_s: float = 0.0
    message: str = ""


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    seconds: float
    last_losses: dict[str, float]
    validation: dict[str, float]
    baseline: dict[str, float]


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("device: 'cuda' requested but torch sees no CUDA GPU")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


class _Run:
    """Everything one training run owns; built once, checkpointed, resumed."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = _device(cfg.device)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.rng = np.random.default_rng(cfg.seed)
        init_gen = torch.Generator().manual_seed(cfg.seed)
        self.pool_gen = torch.Generator().manual_seed(cfg.seed + 1)
        crop = cfg.data.crop
        scale = cfg.generator.scale
        self.source_a = tdata.ImageSource.open(cfg.data.train_a, "--train-a", min_size=crop)
        self.source_b = tdata.ImageSource.open(cfg.data.train_b, "--train-b", min_size=crop * scale)
        self.val_pairs = (
            tdata.load_validation_pairs(
                cfg.data.val_a,
                cfg.data.val_b,
                max_images=cfg.data.max_val_images,
                scale=scale,
                name_a="--val-a",
                name_b="--val-b",
            )
            if cfg.data.val_a is not None and cfg.data.val_b is not None
            else []
        )
        self.weights = LossWeights.preset(cfg.preset, **cfg.loss_overrides)
        self.features = self._perceptual()
        # initialised on the CPU (a CPU torch.Generator cannot draw on CUDA), then moved
        self.g_ab = build_generator(cfg.generator, generator=init_gen).to(self.device)
        params_g = list(self.g_ab.parameters())
        self.g_ba = self.d_a = self.d_b = None
        if cfg.mode == "cyclegan":
            # F: HR -> LR; for scale 2 it gains a stride-2 input stage (GeneratorConfig.inverse)
            g_ba = build_generator(cfg.generator.inverse(), generator=init_gen)
            d_a = build_discriminator(cfg.discriminator, generator=init_gen)
            d_b = build_discriminator(cfg.discriminator, generator=init_gen)
            self.g_ba, self.d_a, self.d_b = (n.to(self.device) for n in (g_ba, d_a, d_b))
            params_g += list(self.g_ba.parameters())
        o = cfg.optim
        betas = (o.beta1, o.beta2)
        self.opt_g = torch.optim.Adam(params_g, lr=o.lr, betas=betas)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, o.lr_factor)
        self.opt_d = self.sched_d = None
        if cfg.mode == "cyclegan":
            params_d = list(self.d_a.parameters()) + list(self.d_b.parameters())
            self.opt_d = torch.optim.Adam(params_d, lr=o.lr, betas=betas)
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, o.lr_factor)
        self.pool_a = ImagePool(o.pool_size, generator=self.pool_gen)
        self.pool_b = ImagePool(o.pool_size, generator=self.pool_gen)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.norm = self._normalization()
        self._samplers()

    # -- set-up -------------------------------------------------------------------------
    def _perceptual(self) -> torch.nn.Module | None:
        if not self.weights.needs_perceptual:
            return None
        from cyclesr_deploy.training.perceptual import VGG19Features, resolve_vgg_weights

        spec = resolve_vgg_weights(self.cfg.perceptual_weights)
        kwargs = {} if self.cfg.perceptual_layer is None else {"layer": self.cfg.perceptual_layer}
        return VGG19Features(weights=spec, **kwargs).to(self.device)

    def _normalization(self) -> NormalizationConfig:
        d = self.cfg.data
        low_a, high_a = tdata.estimate_percentiles(self.source_a, d.pmin, d.pmax, rng=self.rng)
        low_b, high_b = tdata.estimate_percentiles(self.source_b, d.pmin, d.pmax, rng=self.rng)
        return NormalizationConfig(
            pmin=d.pmin, pmax=d.pmax, low_a=low_a, high_a=high_a, low_b=low_b, high_b=high_b
        )

    def _samplers(self) -> None:
        d, norm = self.cfg.data, self.norm

        def norm_a(x: np.ndarray) -> np.ndarray:
            return norm.to_model(x, "a")

        def norm_b(x: np.ndarray) -> np.ndarray:
            return norm.to_model(x, "b")

        if self.cfg.mode == "supervised":
            self.paired = tdata.PairedCropSampler(
                self.source_a,
                self.source_b,
                norm_a,
                norm_b,
                d.crop,
                augment=d.augment,
                scale=self.cfg.generator.scale,
            )
        else:
            self.sampler_a = tdata.CropSampler(self.source_a, norm_a, d.crop, augment=d.augment)
            crop_b = d.crop * self.cfg.generator.scale
            self.sampler_b = tdata.CropSampler(self.source_b, norm_b, crop_b, augment=d.augment)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.cfg.data.batch_size
        if self.cfg.mode == "supervised":
            a, b = self.paired.sample(bs, self.rng)
        else:
            a = self.sampler_a.sample(bs, self.rng)
            b = self.sampler_b.sample(bs, self.rng)
        return (
            torch.from_numpy(a).to(self.device, non_blocking=True),
            torch.from_numpy(b).to(self.device, non_blocking=True),
        )

    # -- one step -----------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        real_a, real_b = self._batch()
        autocast = torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)
        if self.cfg.mode == "supervised":
            self.opt_g.zero_grad(set_to_none=True)
            with autocast:
                sl = supervised_losses(real_a, real_b, self.g_ab, self.weights, self.features)
            self.scaler.scale(sl.total).backward()
            self.scaler.step(self.opt_g)
            self.scaler.update()
            self.sched_g.step()
            self.step += 1
            return sl.as_floats()
        # generators: discriminators frozen so no gradient accumulates in them
        set_requires_grad([self.d_a, self.d_b], False)
        self.opt_g.zero_grad(set_to_none=True)
        with autocast:
            gl = generator_losses(
                real_a,
                real_b,
                self.g_ab,
                self.g_ba,
                self.d_a,
                self.d_b,
                self.weights,
                self.features,
            )
        self.scaler.scale(gl.total).backward()
        self.scaler.step(self.opt_g)
        # discriminators on real vs pooled fakes (fakes are detached: no generator gradient)
        set_requires_grad([self.d_a, self.d_b], True)
        self.opt_d.zero_grad(set_to_none=True)
        fake_a = self.pool_a.query(gl.fake_a)
        fake_b = self.pool_b.query(gl.fake_b)
        with autocast:
            loss_d_a = discriminator_loss(self.d_a, real_a, fake_a)
            loss_d_b = discriminator_loss(self.d_b, real_b, fake_b)
        self.scaler.scale(loss_d_a + loss_d_b).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        self.sched_g.step()
        self.sched_d.step()
        self.step += 1
        out = gl.as_floats()
        out.update(d_a=float(loss_d_a.detach()), d_b=float(loss_d_b.detach()))
        return out

    # -- validation ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Whole-frame LR -> HR prediction in raw HR intensities (crop to the size multiple)."""
        m = self.cfg.generator.size_multiple
        h, w = image.shape[0] // m * m, image.shape[1] // m * m
        x = torch.from_numpy(self.norm.to_model(image[:h, :w], "a"))[None, None].to(self.device)
        self.g_ab.eval()
        try:
            y = self.g_ab(x)[0, 0].float().cpu().numpy()
        finally:
            self.g_ab.train()
        return self.norm.from_model(y, "b")

    def validate(self, baseline: bool = False) -> dict[str, float]:
        """Mean metrics over the validation pairs: the model output (or, with ``baseline``,
        the LR input itself) against the HR image."""
        from cyclesr_deploy.metrics import evaluate

        if not self.val_pairs:
            return {}
        m = self.cfg.generator.size_multiple
        s = self.cfg.generator.scale
        sums: dict[str, list[float]] = {k: [] for k in VAL_METRICS}
        for pair in self.val_pairs:
            if baseline and s != 1:
                return {}
            pred = pair.a if baseline else self.predict(pair.a)
            h, w = pair.a.shape[0] // m * m * s, pair.a.shape[1] // m * m * s
            gt = pair.b[:h, :w]
            pred = pred[:h, :w]
            rep = evaluate(pred, gt, pixel_size=None)
            for k in VAL_METRICS:
                sums[k].append(float(getattr(rep, k)))
        return {f"val_{k}": float(np.mean(v)) for k, v in sums.items()}

    # -- checkpoints --------------------------------------------------------------------
    def model_config(self) -> ModelConfig:
        c = self.cfg
        return ModelConfig(
            name=c.name,
            generator=c.generator,
            normalization=self.norm,
            provenance=Provenance(
                mode=c.mode,
                train_a=str(c.data.train_a),
                train_b=str(c.data.train_b),
                n_images_a=self.source_a.n_images,
                n_images_b=self.source_b.n_images,
                n_skipped_a=len(self.source_a.skipped),
                n_skipped_b=len(self.source_b.skipped),
                pixel_size_um_a=self.source_a.pixel_size_um,
                pixel_size_um_b=self.source_b.pixel_size_um,
                dtype=f"{self.source_a.dtype}/{self.source_b.dtype}",
                steps=self.step,
                seed=c.seed,
                loss_preset=c.preset,
                versions=versions(),
            ),
        )

    def save(self) -> None:
        """Write weights, training state and model.json atomically (model.json last)."""
        out = self.cfg.out
        out.mkdir(parents=True, exist_ok=True)
        nets = {"ab": self.g_ab, "ba": self.g_ba}
        for key, net in nets.items():
            if net is not None:
                with atomic_path(out / WEIGHTS[key]) as part:
                    torch.save(net.state_dict(), part)
        state: dict[str, Any] = {
            "step": self.step,
            "rng": json.dumps(self.rng.bit_generator.state),
            "pool_gen": self.pool_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "scaler": self.scaler.state_dict(),
            "pool_a": self.pool_a.state_dict(),
            "pool_b": self.pool_b.state_dict(),
            "normalization": self.norm.model_dump_json(),
        }
        if self.cfg.mode == "cyclegan":
            state.update(
                d_a=self.d_a.state_dict(),
                d_b=self.d_b.state_dict(),
                opt_d=self.opt_d.state_dict(),
                sched_d=self.sched_d.state_dict(),
            )
        with atomic_path(out / TRAIN_STATE) as part:
            torch.save(state, part)
        save_model_config(out, self.model_config())

    def load(self) -> None:
        """Restore the full state written by :meth:`save` (``--resume``)."""
        out = self.cfg.out
        path = out / TRAIN_STATE
        if not path.is_file():
            raise InputError(f"--resume: {path} not found; nothing to resume")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.g_ab.load_state_dict(
            torch.load(out / WEIGHTS["ab"], map_location=self.device, weights_only=True)
        )
        if self.g_ba is not None:
            self.g_ba.load_state_dict(
                torch.load(out / WEIGHTS["ba"], map_location=self.device, weights_only=True)
            )
            self.d_a.load_state_dict(state["d_a"])
            self.d_b.load_state_dict(state["d_b"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.sched_d.load_state_dict(state["sched_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.scaler.load_state_dict(state["scaler"])
        self.pool_a.load_state_dict(state["pool_a"])
        self.pool_b.load_state_dict(state["pool_b"])
        # RNG states are CPU ByteTensors; map_location moved them to the training device
        self.pool_gen.set_state(state["pool_gen"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.norm = NormalizationConfig.model_validate_json(state["normalization"])
        self._samplers()
        self.step = int(state["step"])


def versions() -> dict[str, str]:
    import scipy
    import skimage

    return {
        "cyclesr_deploy": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "python": platform.python_version(),
    }


def _write_config(cfg: TrainConfig) -> None:
    import yaml

    with atomic_path(cfg.out / TRAIN_CONFIG_FILE) as part:
        part.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "utf-8")


def _loss_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if not f.name.startswith("fake_"))


#: scalar loss terms logged to the CSV: generator terms, discriminators, supervised terms
LOSS_COLUMNS = tuple(
    dict.fromkeys((*_loss_names(GeneratorLosses), "d_a", "d_b", *_loss_names(SupervisedLosses)))
)
CSV_COLUMNS = ("step", "seconds", *LOSS_COLUMNS, *(f"val_{k}" for k in VAL_METRICS))


class _CsvLog:
    """Append-only CSV of mean losses (every ``log_every`` steps) and validation metrics;
    fixed columns, empty cells where a row has no value."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        if not (resume and path.is_file()):
            with atomic_path(path) as part:
                part.write_text(",".join(CSV_COLUMNS) + "\n", encoding="utf-8")

    def write(self, row: dict[str, float | int]) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore").writerow(row)


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    on_event: Callable[[TrainEvent], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train as configured; returns when ``cfg.optim.steps`` steps are done (or, for tests and
    schedulers, after ``stop_after`` steps of this call, writing a checkpoint first).

    Everything is validated before the first step: data folders, crop sizes, perceptual
    weights. A non-empty ``cfg.out`` is refused unless ``resume`` (weights are never silently
    overwritten).
    """
    emit = on_event or (lambda e: None)
    out = Path(cfg.out)
    if not resume and out.exists() and any(out.iterdir()):
        raise InputError(
            f"--out {out} is not empty; choose a new folder, or pass --resume to continue the "
            "run saved there"
        )
    run = _Run(cfg)
    if resume:
        run.load()
    out.mkdir(parents=True, exist_ok=True)
    _write_config(cfg)
    csv_log = _CsvLog(out / LOG_FILE, resume)
    total = cfg.optim.steps
    baseline = run.validate(baseline=True) if run.val_pairs and run.step == 0 else {}
    skipped = len(run.source_a.skipped) + len(run.source_b.skipped)
    message = f"{run.device}; {run.source_a.n_images} LR and {run.source_b.n_images} HR images"
    if skipped:
        message += f"; {skipped} unreadable file(s) skipped (see warnings)"
    emit(TrainEvent("start", run.step, total, metrics=baseline, message=message))
    t0 = time.perf_counter()
    start_step = run.step
    losses: dict[str, float] = {}
    validation: dict[str, float] = {}
    window: list[dict[str, float]] = []
    while run.step < total:
        losses = run.train_step()
        window.append(losses)
        if not all(math.isfinite(v) for v in losses.values()):
            run.save()
            raise RuntimeError(
                f"non-finite loss at step {run.step}: {losses}; state saved, lower the lr "
                "or disable amp"
            )
        rate = (run.step - start_step) / max(time.perf_counter() - t0, 1e-9)
        emit(TrainEvent("step", run.step, total, losses=losses, steps_per_s=rate))
        last = run.step == total or (stop_after is not None and run.step - start_step >= stop_after)
        if run.step % cfg.log_every == 0 or last:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
            window.clear()
            csv_log.write(
                {
                    "step": run.step,
                    "seconds": round(time.perf_counter() - t0, 3),
                    **{k: mean.get(k, "") for k in LOSS_COLUMNS},
                }
            )
        if run.val_pairs and (run.step % cfg.val_every == 0 or last):
            validation = run.validate()
            csv_log.write(
                {"step": run.step, "seconds": round(time.perf_counter() - t0, 3), **validation}
            )
            emit(TrainEvent("validation", run.step, total, metrics=validation))
        if run.step % cfg.checkpoint_every == 0 or last:
            run.save()
            emit(TrainEvent("checkpoint", run.step, total, message=str(out)))
        if last:
            break
    seconds = time.perf_counter() - t0
    emit(TrainEvent("end", run.step, total, losses=losses, metrics=validation))
    return TrainResult(out, run.step, seconds, losses, validation, baseline)
