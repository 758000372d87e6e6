"""``cyclesr bench latency|quality|compare``: speed, image quality and backend parity.

Each writes JSON + a markdown table (+ PNGs) into ``-o OUTDIR``, prints the table with rich
to stdout and progress to stderr. PNGs need the ``bench`` extra (matplotlib).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from cyclesr_deploy.cli._common import err, out, user_errors

app = typer.Typer(
    help="Benchmarks: latency/throughput, image quality, backend parity.",
    no_args_is_help=True,
)

_MODEL = typer.Argument(..., help="Model folder (model.json plus exported artifacts).")
_OUT = typer.Option(..., "--out", "-o", help="Output folder (created).")


def _progress(msg: str) -> None:
    err.print(f"[dim]{escape(msg)}[/]", highlight=False)


def _jsonable(value: Any) -> Any:
    """Non-finite floats as the strings "Infinity"/"-Infinity"/"NaN" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, result: dict[str, Any]) -> Path:
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    path.write_text(json.dumps(_jsonable(clean), indent=2, allow_nan=False) + "\n", "utf-8")
    return path


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in header:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[escape(c) for c in row])
    out.print(table)


def _outdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@app.command("latency")
def latency(
    model_dir: Path = _MODEL,
    out_dir: Path = _OUT,
    backend: list[str] = typer.Option(
        ["onnxruntime"],
        "--backend",
        help="onnxruntime, openvino, torch or tensorrt; repeat for several.",
    ),
    precision: list[str] = typer.Option(
        ["fp32"], "--precision", help="fp32, fp16, bf16 or int8 (OpenVINO); repeatable."
    ),
    tile: list[int] = typer.Option([], "--tile", help="Tile side in input px; repeatable."),
    batch: list[int] = typer.Option([1], "--batch", help="Tiles per engine call; repeatable."),
    whole_frame: bool = typer.Option(
        False, "--whole-frame", help="Also the whole frame as one tile."
    ),
    frame_size: int = typer.Option(1024, "--frame-size", help="Synthetic frame side (input px)."),
    repeats: int = typer.Option(10, "--repeats", help="Timed runs per configuration."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed runs before."),
    end_to_end: bool = typer.Option(
        True, "--end-to-end/--engine-only", help="Also time the enhance pipeline."
    ),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads of the engine."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG plots."),
) -> None:
    """Latency (p50/p95/p99), frames/s, Mpx/s, TFLOP/s, memory per backend x precision x tile x
    batch: latency.json, latency.md, throughput_vs_tile.png, latency_distribution.png."""
    from cyclesr_deploy.bench.latency import (
        LATENCY_COLUMNS,
        LatencySettings,
        latency_markdown,
        latency_rows,
        run_latency,
    )

    with user_errors():
        settings = LatencySettings(
            backends=tuple(backend),
            precisions=tuple(precision),
            tiles=tuple(tile) if tile or whole_frame else (256, 512),
            batches=tuple(batch),
            whole_frame=whole_frame,
            frame_size=frame_size,
            repeats=repeats,
            warmup=warmup,
            end_to_end=end_to_end,
            threads=threads,
            device=device,
        )
        result = run_latency(model_dir, settings, on_progress=_progress)
        folder = _outdir(out_dir)
        write_json(folder / "latency.json", result)
        (folder / "latency.md").write_text(latency_markdown(result), "utf-8")
        if plots:
            from cyclesr_deploy.bench import plots as p

            p.throughput_vs_tile(result, folder / "throughput_vs_tile.png")
            p.latency_distribution(result, folder / "latency_distribution.png")
    _print_table("latency", LATENCY_COLUMNS, latency_rows(result))
    err.print(f"wrote {folder}")


def _models(specs: list[str]) -> dict[str, Path]:
    """``NAME=DIR``, ``DIR`` (named after the folder) or a built-in model's name."""
    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.errors import InputError

    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            name, folder = Path(spec).name, spec
        if not name or not folder:
            raise InputError(f"--model {spec!r}: expected NAME=DIR")
        if name in models:
            raise InputError(f"--model: the name {name!r} is given twice")
        models[name] = resolve_model(folder)
    return models


@app.command("quality")
def quality(
    lr: Path = typer.Option(..., "--lr", help="Folder of LR (input) TIFFs."),
    hr: Path = typer.Option(..., "--hr", help="Folder of HR TIFFs, paired by file name."),
    out_dir: Path = _OUT,
    model: list[str] = typer.Option(
        [], "--model", help="NAME=DIR, DIR or a built-in model name; repeatable."
    ),
    hr_repeat: Path | None = typer.Option(
        None, "--hr-repeat", help="Second HR acquisition (same names): FRC of the HR row."
    ),
    pixel_size: float | None = typer.Option(
        None, "--pixel-size", help="HR pixel size in nm (default: the HR files' metadata)."
    ),
    scaling: str = typer.Option("gt", "--scaling", help="gt, care or dtype (see `metrics`)."),
    backend: str = typer.Option("auto", "--backend", help="Engine backend for the models."),
    figure: bool = typer.Option(True, "--figure/--no-figure", help="Write figure.png."),
) -> None:
    """PSNR, SSIM, MSE, NRMSE, BGSTD, CUF, decorrelation and FRC resolution per method (input
    or bicubic, each model, HR), mean ± std: quality.json, quality.md, figure.png."""
    from cyclesr_deploy.bench.quality import (
        quality_header,
        quality_markdown,
        quality_rows,
        run_quality,
    )

    with user_errors():
        result = run_quality(
            lr,
            hr,
            _models(model),
            hr_repeat_dir=hr_repeat,
            pixel_size_nm=pixel_size,
            scaling=scaling,
            backend=backend,
            keep_images=figure,
            on_progress=_progress,
        )
        folder = _outdir(out_dir)
        write_json(folder / "quality.json", result)
        (folder / "quality.md").write_text(quality_markdown(result), "utf-8")
        if figure:
            from cyclesr_deploy.bench import plots as p

            p.quality_figure(result["_images"], folder / "figure.png")
    _print_table("quality", quality_header(result), quality_rows(result))
    err.print(f"wrote {folder}")


@app.command("compare")
def compare(
    model_dir: Path = _MODEL,
    out_dir: Path = _OUT,
    frames: Path | None = typer.Option(None, "--frames", help="Folder of TIFF frames."),
    synthetic: int = typer.Option(2, "--synthetic", help="Synthetic frames when no --frames."),
    size: int = typer.Option(256, "--size", help="Side of the synthetic frames (px)."),
    tolerance: float = typer.Option(
        1e-2, "--tolerance", help="Abs difference counted as a mismatch (output range [-1, 1])."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Max abs error, PSNR and share of pixels beyond --tolerance for every pair of available
    backends x precisions on the same frames: compare.json, compare.md."""
    from cyclesr_deploy.bench.compare import (
        COMPARE_COLUMNS,
        compare_markdown,
        compare_rows,
        run_compare,
    )

    with user_errors():
        result = run_compare(
            model_dir,
            frames_dir=frames,
            synthetic=synthetic,
            size=size,
            tolerance=tolerance,
            device=device,
            on_progress=_progress,
        )
        folder = _outdir(out_dir)
        write_json(folder / "compare.json", result)
        (folder / "compare.md").write_text(compare_markdown(result), "utf-8")
    _print_table("compare", COMPARE_COLUMNS, compare_rows(result))
    err.print(f"wrote {folder}")
