"""``cyclesr synth OUT``: write a synthetic confocal data set (unpaired train, paired test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cyclesr_deploy.cli._common import err, out, user_errors


def synth(
    out_dir: Path = typer.Argument(..., help="Output folder (must be empty or new)."),
    n_train: int = typer.Option(64, min=0, help="Unpaired training images per domain."),
    n_test: int = typer.Option(8, min=0, help="Paired test samples (LR, HR, ground truth)."),
    size: int | None = typer.Option(None, help="Image side on the HR grid, px (default: 256)."),
    seed: int | None = typer.Option(None, help="Random seed; same seed, same bytes (default: 0)."),
    bit_depth: int | None = typer.Option(None, help="8 or 16 (default: 16)."),
    binning: int | None = typer.Option(
        None, help="LR detector pixel = binning x HR pixel (default: 1)."
    ),
    lr_grid: str | None = typer.Option(
        None,
        help="'hr': LR interpolated onto the HR grid (scale-1 models) or 'native' (default: hr).",
    ),
    config: Path | None = typer.Option(
        None, help="JSON file with any SynthConfig fields; the options above override it."
    ),
    vary: bool = typer.Option(
        False,
        help="Draw each image's structure mix, LR optics, photons and background "
        "(SynthConfig.vary defaults; a --config 'vary' object sets the ranges).",
    ),
    stack: bool = typer.Option(False, help="One multi-page TYX file per split."),
    overwrite: bool = typer.Option(False, help="Allow writing into a non-empty folder."),
) -> None:
    """Simulate LR and HR confocal images of seeded filaments, puncta, vesicles and nuclei."""
    from cyclesr_deploy.errors import InputError
    from cyclesr_deploy.synthetic import as_config, generate_dataset

    with user_errors():
        fields: dict[str, Any] = {}
        if config is not None:
            try:
                fields = json.loads(Path(config).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"--config {config}: cannot read JSON ({exc})") from exc
            if not isinstance(fields, dict):
                raise InputError(f"--config {config}: expected a JSON object")
            fields.pop("n_train", None)
        overrides = {"size": size, "seed": seed, "bit_depth": bit_depth, "binning": binning}
        overrides["lr_grid"] = lr_grid
        if vary and fields.get("vary") is None:
            overrides["vary"] = {}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        cfg = as_config(fields)
        total = 2 * n_train + 3 * n_test
        with err.status(f"simulating {total} images of {cfg.size}^2 ...", spinner="dots"):
            summary = generate_dataset(
                out_dir, cfg, n_train, n_test, stack=stack, overwrite=overwrite
            )

    from rich.table import Table

    psf = summary.psf
    table = Table(title=f"synthetic data set in {summary.out_dir}", title_justify="left")
    for col in ("modality", "PSF sigma nm", "FWHM nm", "sigma px (HR grid)", "files"):
        table.add_column(col)
    table.add_row(
        "LR (trainA, testA)",
        f"{psf['lr']['sigma_nm']:.1f}",
        f"{psf['lr']['fwhm_nm']:.1f}",
        f"{psf['lr']['sigma_px_hr_grid']:.2f}",
        f"{summary.n_train} + {summary.n_test}",
    )
    table.add_row(
        "HR (trainB, testB)",
        f"{psf['hr']['sigma_nm']:.1f}",
        f"{psf['hr']['fwhm_nm']:.1f}",
        f"{psf['hr']['sigma_px_hr_grid']:.2f}",
        f"{summary.n_train} + {summary.n_test}",
    )
    out.print(table)
    out.print(
        f"PSF ratio LR/HR: {psf['ratio_lr_hr']:.3f}; manifest: {summary.out_dir / 'dataset.json'}"
    )
