"""``cyclesr metrics PRED GT``: quality metrics of predictions against ground truth."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from cyclesr_deploy.cli._common import EXIT_INPUT, EXIT_PARTIAL, err, out, user_errors


class Scaling(str, Enum):
    gt = "gt"
    dtype = "dtype"
    care = "care"


_PER_IMAGE_KEYS = ("psnr", "ssim", "bgstd", "cuf_ring_index", "decorrelation_resolution_px")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.4e}"


def metrics(
    pred: Path = typer.Argument(..., help="Prediction: a TIFF file (2-D or a stack) or a folder."),
    gt: Path = typer.Argument(..., help="Ground truth: a TIFF file or a folder (paired by name)."),
    pixel_size: float | None = typer.Option(
        None, "--pixel-size", help="Pixel size in µm (default: read from the GT file metadata)."
    ),
    scaling: Scaling = typer.Option(
        Scaling.gt,
        help="How both images are brought to [0, 1]: gt = GT min/max, dtype = divide by the "
        "integer range (the paper's uint8 convention), care = percentile + affine fit.",
    ),
    repeat: Path | None = typer.Option(
        None,
        help="A second prediction from an independent acquisition of the same field: adds FRC.",
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write every value (per image, mean, std) to this JSON file."
    ),
    per_image: bool = typer.Option(False, help="Print one row per image as well."),
) -> None:
    """Compute PSNR, SSIM, MSE, NRMSE, BGSTD, CUF, decorrelation resolution (and FRC).

    Folders are paired by file name; stacks are evaluated plane by plane. Bad pairs are
    reported and skipped; the exit code is then 1 (2 when nothing could be evaluated).
    """
    from cyclesr_deploy.io import atomic_path
    from cyclesr_deploy.metrics import QualityReport
    from cyclesr_deploy.metrics.files import evaluate_files

    def report_failure(item) -> None:
        if item.error is not None:
            err.print(f"[red]skipped[/] {escape(item.name)}: {escape(item.error)}", highlight=False)

    with user_errors(), err.status("evaluating ...", spinner="dots"):
        result = evaluate_files(
            pred,
            gt,
            pixel_size=pixel_size,
            scaling=scaling.value,
            prediction_repeat=repeat,
            on_item=report_failure,
        )
    good = [it for it in result.items if it.report is not None]
    if not good:
        err.print("[bold red]error:[/] no image pair could be evaluated; nothing written")
        raise typer.Exit(EXIT_INPUT)

    from rich.table import Table

    base = good[0].report
    mean_rows = QualityReport.model_validate({**base, **result.mean}).rows()
    table = Table(title=f"{result.n_ok} image(s), scaling={result.scaling}", title_justify="left")
    table.add_column("metric")
    if len(good) == 1:
        table.add_column("value", justify="right")
        table.add_column("unit")
        table.add_column("convention")
        for name, value, unit, conv in mean_rows:
            if value is not None:
                table.add_row(name, _fmt(value), unit, conv)
    else:
        std_rows = QualityReport.model_validate({**base, **result.std}).rows()
        table.add_column("mean", justify="right")
        table.add_column("std", justify="right")
        table.add_column("unit")
        for (name, value, unit, _), (_, sd, _, _) in zip(mean_rows, std_rows, strict=True):
            if value is not None:
                table.add_row(name, _fmt(value), _fmt(sd), unit)
    out.print(table)
    if per_image:
        per = Table("image", "PSNR dB", "SSIM", "BGSTD", "CUF", "decorr. res. px")
        for it in good:
            r = it.report
            per.add_row(it.name, *(_fmt(r[k]) for k in _PER_IMAGE_KEYS))
        out.print(per)
    if json_out is not None:
        with atomic_path(json_out) as part:
            text = json.dumps(json.loads(result.model_dump_json()), indent=2) + "\n"
            part.write_text(text, encoding="utf-8")
        err.print(f"wrote {json_out}")
    if result.n_failed:
        err.print(f"[yellow]{result.n_failed} item(s) failed[/]")
        raise typer.Exit(EXIT_PARTIAL)
