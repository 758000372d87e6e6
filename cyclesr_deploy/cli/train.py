"""``cyclesr train``: train a CycleGAN (unpaired) or supervised generator into a model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from cyclesr_deploy.cli._common import err, out, user_errors

_DATA = "Data"
_MODEL = "Model"
_RUN = "Run"


def train(
    config: Path | None = typer.Option(None, help="YAML/JSON TrainConfig; options override it."),
    train_a: Path | None = typer.Option(
        None, help="LR images: folder or stack.", rich_help_panel=_DATA
    ),
    train_b: Path | None = typer.Option(
        None, help="HR images: folder or stack.", rich_help_panel=_DATA
    ),
    val_a: Path | None = typer.Option(None, help="Paired validation LR.", rich_help_panel=_DATA),
    val_b: Path | None = typer.Option(None, help="Paired validation HR.", rich_help_panel=_DATA),
    crop: int | None = typer.Option(
        None, help="Crop side, px (default: 128).", rich_help_panel=_DATA
    ),
    batch_size: int | None = typer.Option(None, help="Default: 4.", rich_help_panel=_DATA),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Model folder to write.", rich_help_panel=_RUN
    ),
    mode: str | None = typer.Option(
        None, help="cyclegan | supervised (default: cyclegan).", rich_help_panel=_MODEL
    ),
    ngf: int | None = typer.Option(
        None, help="Generator width (default: 32).", rich_help_panel=_MODEL
    ),
    n_blocks: int | None = typer.Option(
        None, help="Residual blocks (default: 6).", rich_help_panel=_MODEL
    ),
    scale: int | None = typer.Option(
        None, help="1 or 2 (supervised) (default: 1).", rich_help_panel=_MODEL
    ),
    loss_preset: str | None = typer.Option(
        None, help="paper | canonical | supervised (default: by mode).", rich_help_panel=_MODEL
    ),
    perceptual_weights: str | None = typer.Option(
        None,
        help="VGG19 weights file (torchvision format), or 'random'; default: torch hub cache.",
        rich_help_panel=_MODEL,
    ),
    steps: int | None = typer.Option(
        None, help="Optimisation steps (default: 2000).", rich_help_panel=_RUN
    ),
    seed: int | None = typer.Option(None, help="Default: 0.", rich_help_panel=_RUN),
    device: str | None = typer.Option(
        None, help="auto | cpu | cuda (default: auto).", rich_help_panel=_RUN
    ),
    checkpoint_every: int | None = typer.Option(None, help="Default: 250.", rich_help_panel=_RUN),
    val_every: int | None = typer.Option(None, help="Default: 500.", rich_help_panel=_RUN),
    resume: bool = typer.Option(
        False, help="Continue the run saved in --out.", rich_help_panel=_RUN
    ),
) -> None:
    """Train generators from two folders of unpaired TIFFs (or paired, --mode supervised).

    Writes a model folder: model.json, generator_ab.pt (LR -> HR), generator_ba.pt,
    train_state.pt (for --resume), train_config.yaml, train_log.csv.
    """
    from cyclesr_deploy.errors import require

    with user_errors():
        require("torch", "train", "Training")
        require("yaml", "train", "Reading training configs")
        from cyclesr_deploy.training.config import load_train_config
        from cyclesr_deploy.training.trainer import train as run_training

        overrides = {
            "data.train_a": train_a,
            "data.train_b": train_b,
            "data.val_a": val_a,
            "data.val_b": val_b,
            "data.crop": crop,
            "data.batch_size": batch_size,
            "out": out_dir,
            "mode": mode,
            "generator.ngf": ngf,
            "generator.n_blocks": n_blocks,
            "generator.scale": scale,
            "loss_preset": loss_preset,
            "perceptual_weights": perceptual_weights,
            "optim.steps": steps,
            "seed": seed,
            "device": device,
            "checkpoint_every": checkpoint_every,
            "val_every": val_every,
        }
        overrides = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
        cfg = load_train_config(config, overrides)
        display = _Display(cfg.optim.steps)
        with display:
            result = run_training(cfg, resume=resume, on_event=display.on_event)
    out.print(f"model folder: {result.model_dir}  ({result.steps} steps, {result.seconds:.0f} s)")
    if result.validation:
        base = result.baseline
        for key in ("val_psnr", "val_ssim", "val_psnr_care"):
            before = f"{base[key]:.3f} -> " if key in base else ""
            out.print(f"  {key[4:]}: {before}{result.validation[key]:.3f}")


class _Display:
    """Rich progress bar on stderr with the latest losses, steps/s and ETA."""

    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.2f} step/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"),
            console=err,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, rate=0.0, losses="")

    def __enter__(self) -> _Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, event) -> None:
        if event.kind == "step":
            shown = ("total", "cycle_forward", "d_b", "l1")
            text = " ".join(f"{k}={v:.3f}" for k, v in event.losses.items() if k in shown)
            self.progress.update(
                self.task, completed=event.step, rate=event.steps_per_s, losses=text
            )
        elif event.kind == "start":
            self.progress.update(self.task, completed=event.step)
            err.print(
                f"training on {event.message}; starting at step {event.step}", highlight=False
            )
            if event.metrics:
                err.print(
                    "LR input vs HR (validation): "
                    + ", ".join(f"{k[4:]}={v:.3f}" for k, v in event.metrics.items())
                )
        elif event.kind == "validation":
            err.print(
                f"step {event.step} validation: "
                + ", ".join(f"{k[4:]}={v:.3f}" for k, v in event.metrics.items())
            )
