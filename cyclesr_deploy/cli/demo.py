"""``cyclesr demo``: the built-in end-to-end run on default settings (no data, no GPU needed)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cyclesr_deploy.cli._common import err, out, user_errors


def demo(
    out_dir: Path = typer.Option(Path("cyclesr-demo"), "--out", "-o", help="Where to write."),
    frames: int = typer.Option(8, min=1, help="Frames of the simulated time-lapse."),
    size: int = typer.Option(1024, min=256, help="Frame side, px."),
    seed: int = typer.Option(0, min=0, help="Simulation seed."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model folder or built-in name (default: reference-cyclegan)."
    ),
    tile: int = typer.Option(
        600, min=64, help="Tile side, px (600: 2 x 2 overlapping tiles per 1024 px frame)."
    ),
) -> None:
    """Simulate a low-resolution confocal time-lapse, enhance it with the built-in CycleGAN
    (ONNX Runtime, CPU, tiled) and compare input, output and the high-resolution truth."""
    from rich.table import Table

    from cyclesr_deploy.demo import METRICS, run_demo, table_cells

    t0 = time.perf_counter()
    with user_errors(), err.status("demo ...", spinner="dots") as status:
        res = run_demo(
            out_dir,
            n_frames=frames,
            size=size,
            seed=seed,
            model=model,
            tile=tile,
            on_progress=lambda msg: (err.log(msg), status.update(msg)),
        )
    scored = ", ".join(map(str, res.scored_frames))
    table = Table(
        title=f"mean over frames {scored} of {frames} ({size}x{size} px); reference: the HR "
        "acquisition",
        title_justify="left",
    )
    table.add_column("")
    for title, _fmt in METRICS.values():
        table.add_column(title, justify="right")
    for row, values in res.table.items():
        table.add_row(row, *table_cells(values))
    out.print(table)
    out.print(
        "PSNR/SSIM against HR (min-max scaled); BGSTD: background noise, 8-bit grey levels; "
        "CUF: the paper's cut-off ring index; res.: decorrelation resolution (Descloux 2019)."
    )
    out.print(f"input (LR stack):   {res.acquisition}")
    out.print(f"result (OME-TIFF):  {res.enhanced}")
    out.print(f"HR reference:       {res.reference}")
    out.print(f"comparison figure:  {res.figure}")
    out.print(f"metrics:            {res.metrics_md}  {res.metrics_json}")
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items())
    err.print(f"engine {res.engine}; {timings}; done in {time.perf_counter() - t0:.1f} s")
