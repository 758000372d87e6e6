"""``cyclesr export onnx|fp16|tensorrt|all|check|precision|trust MODEL_DIR``: deployable
artifacts in the model folder."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.markup import escape

from cyclesr_deploy.cli._common import EXIT_PARTIAL, err, out, user_errors

app = typer.Typer(
    help="Export a trained model folder to ONNX (FP32, FP16) and TensorRT engines.",
    no_args_is_help=True,
)

_MODEL = typer.Argument(..., help="Model folder written by `cyclesr train`.")
_OVERWRITE = typer.Option(False, help="Replace existing artifacts.")
_FROZEN = typer.Option(
    None,
    "--frozen/--no-frozen",
    help="Also export generator.stats.onnx + generator.tile.onnx (frozen InstanceNorm "
    "statistics, seam-free tiling; default: on for InstanceNorm generators).",
)
_CHECK_FRAME = typer.Option(
    None,
    "--check-frame",
    exists=True,
    dir_okay=False,
    help="With the frozen graphs: a TIFF (one 2-D LR plane of your acquisitions, at least about "
    "1024 x 1024 px) on which the crops statistics estimate is checked against whole-frame "
    "inference for enhance --stats auto (default: synthetic 1024^2 and 2048^2 LR frames).",
)


@contextlib.contextmanager
def _export_errors() -> Iterator[None]:
    """Input problems exit 2 (user_errors); a failed parity gate or engine build exits 1,
    with one red line and nothing half-written (the library guarantees the latter)."""
    from cyclesr_deploy.engines.trt_config import EngineBuildError, TensorRTVersionError
    from cyclesr_deploy.export.parity import ExportError

    with user_errors():
        try:
            yield
        except (ExportError, EngineBuildError, TensorRTVersionError) as exc:
            err.print(f"[bold red]export failed:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_PARTIAL) from exc


def _row(table, artifact: str, path: Path, precision: str, error: str, seconds: float) -> None:
    size = f"{path.stat().st_size / 1e6:.2f} MB" if path.is_file() else "-"
    table.add_row(artifact, str(path.name), size, precision, error, f"{seconds:.1f}")


def _table():
    from rich.table import Table

    table = Table(title="export", title_justify="left")
    for col in ("artifact", "file", "size", "precision", "parity error", "time s"):
        table.add_column(col, justify="right" if col in ("size", "time s") else "left")
    return table


def _onnx(model_dir: Path, direction: str, exporter: str, overwrite: bool, table) -> Path:
    from cyclesr_deploy.export import onnx_from_checkpoint

    with err.status(f"exporting {direction} to ONNX ({exporter}) and checking parity ..."):
        res = onnx_from_checkpoint(
            model_dir, direction=direction, dynamo=exporter == "dynamo", overwrite=overwrite
        )
    _row(table, "ONNX", res.path, "fp32", f"max abs {res.max_abs_error:.1e} vs torch", res.seconds)
    return res.path


def _fp16(onnx_path: Path, overwrite: bool, table) -> Path:
    from cyclesr_deploy.export import fp16_onnx_from_onnx

    with err.status("deriving the FP16 ONNX (InstanceNorm kept FP32) ..."):
        res = fp16_onnx_from_onnx(onnx_path, overwrite=overwrite)
    error = f"rel L2 {res.rel_l2_error:.1e} vs fp32"
    _row(table, "ONNX FP16", res.path, "fp16 (IN fp32)", error, res.seconds)
    return res.path


def _wants_frozen(model_dir: Path, direction: str, frozen: bool | None) -> bool:
    """``--frozen/--no-frozen``; by default on for InstanceNorm generators."""
    if frozen is not None:
        return frozen
    from cyclesr_deploy.model import load_model

    cfg = load_model(model_dir).generator
    return (cfg if direction == "ab" else cfg.inverse()).norm == "instance"


def _frozen(
    model_dir: Path, direction: str, overwrite: bool, table, frames: list | None = None
) -> None:
    """The two frozen-InstanceNorm graphs (seam-free tiling): ``generator.stats.onnx`` and
    ``generator.tile.onnx``, each parity-checked and entered in export.json; for the deployed
    direction then the check of the crops estimate behind ``--stats auto``
    (``frozen_stats.json``)."""
    from cyclesr_deploy.export.frozen_onnx import (
        stats_onnx_from_checkpoint,
        tile_onnx_from_checkpoint,
    )

    steps = (
        ("ONNX stats", stats_onnx_from_checkpoint, "rel max abs {:.1e} vs torch"),
        ("ONNX tile", tile_onnx_from_checkpoint, "max abs {:.1e} vs torch"),
    )
    for artifact, export, fmt in steps:
        with err.status(f"exporting the frozen-InstanceNorm {artifact} graph ({direction}) ..."):
            res = export(model_dir, direction=direction, overwrite=overwrite, details=True)
        _row(table, artifact, res.path, "fp32", fmt.format(res.max_abs_error), res.seconds)
    if direction == "ab":
        _check(model_dir, table, frames)


def _check_frames(model_dir: Path, frame: Path | None) -> list | None:
    """The check frames of ``--stats auto``'s check, loaded and validated before anything is
    exported (None: no check, the model does not run through the single-channel pipeline)."""
    from cyclesr_deploy.export.frozen_check import check_frames
    from cyclesr_deploy.model import load_model

    model = load_model(model_dir)
    if model.generator.norm != "instance" or model.generator.in_channels != 1:
        return None
    return check_frames(model, frame)


def _check(model_dir: Path, table, frames: list | None) -> None:
    from cyclesr_deploy.export.frozen_check import check_model
    from cyclesr_deploy.model import FROZEN_CHECK

    if frames is None:
        table.add_row(
            "stats check", "-", "-", "-", "skipped: not a 1-channel InstanceNorm model", "-"
        )
        return
    with err.status("checking the crops statistics estimate against the whole frame ..."):
        record = check_model(model_dir, frames=frames)
    per_frame = " / ".join(f"{c['psnr_db']:.1f}" for c in record["checks"])
    summary = f"crops {per_frame} dB -> {record['choice']}"
    _row(table, "stats check", Path(model_dir) / FROZEN_CHECK, "fp32", summary, record["seconds"])
    err.print(
        f"stats check: crops estimate {per_frame} dB vs whole-frame inference -> "
        f"enhance --stats auto uses {record['choice']}",
        highlight=False,
    )


def _trust(model_dir: Path, data: Path | None, backend: str, max_frames: int | None, table) -> None:
    """Calibrate the trust score (``cyclesr export trust``; after ``export onnx`` when the
    training LR folder exists or ``--trust-data`` is given)."""
    import time

    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.export.trust import MAX_FRAMES, calibrate_model
    from cyclesr_deploy.model import ModelFolder

    t0 = time.perf_counter()
    folder = ModelFolder(resolve_model(model_dir))
    with err.status("calibrating the trust score on in-domain frames ..."):
        cal = calibrate_model(
            folder.path, data, backend=backend, max_frames=max_frames or MAX_FRAMES
        )
    summary = f"{cal.n_frames} frames, threshold {cal.threshold:.3g}"
    _row(table, "trust", folder.trust_json, "-", summary, time.perf_counter() - t0)
    err.print(f"trust: calibrated on {cal.n_frames} frames of {escape(cal.data)}", highlight=False)


def _trust_state(model_dir: Path, table) -> None:
    from cyclesr_deploy.export.trust import calibration_state

    state, why = calibration_state(model_dir)
    table.add_row("trust", "-", "-", "-", f"{state}: {why}", "-")
    err.print(f"trust calibration: {state}: {escape(why)}", highlight=False)


def _tensorrt(model_dir: Path, cfg, overwrite: bool, table) -> None:
    from cyclesr_deploy.export import engine_from_onnx

    with err.status("building the TensorRT engine (minutes on first build) ..."):
        res = engine_from_onnx(model_dir, cfg, overwrite=overwrite)
    note = "up to date, build skipped" if res.skipped else "built"
    _row(table, "TensorRT", res.engine_path, cfg.precision, note, res.seconds)


def _tensorrt_frozen(model_dir: Path, cfg, frame: tuple[int, int], overwrite: bool, table) -> None:
    from cyclesr_deploy.export.tensorrt_frozen import frozen_engines_from_onnx

    with err.status("building the TensorRT frozen-statistics engines (minutes) ..."):
        builds = frozen_engines_from_onnx(model_dir, frame, cfg, overwrite=overwrite)
    for label, res in zip(("TensorRT stats", "TensorRT tile"), builds, strict=True):
        note = "up to date, build skipped" if res.skipped else "built"
        _row(table, label, res.engine_path, cfg.precision, note, res.seconds)


def _trt_config(tile, batch, precision, dynamic, min_tile, max_tile, opt_level, workspace_gib):
    from cyclesr_deploy.engines.trt_config import TensorRTBuildConfig

    fields = {
        "tile": tile,
        "batch": batch,
        "precision": precision,
        "dynamic": dynamic,
        "min_tile": min_tile,
        "max_tile": max_tile,
        "opt_level": opt_level,
        "workspace_gib": workspace_gib,
    }
    return TensorRTBuildConfig(**{k: v for k, v in fields.items() if v is not None})


@app.command("onnx")
def onnx_cmd(
    model_dir: Path = _MODEL,
    direction: str = typer.Option("ab", help="ab = LR -> HR (deployed), ba = HR -> LR."),
    exporter: str = typer.Option("dynamo", help="dynamo (opset 20) or torchscript (opset 17)."),
    fp16: bool = typer.Option(True, help="Also derive the FP16 ONNX (direction ab)."),
    frozen: bool | None = _FROZEN,
    check_frame: Path | None = _CHECK_FRAME,
    overwrite: bool = _OVERWRITE,
    trust_data: Path | None = typer.Option(
        None,
        help="In-domain LR frames (folder or stack) to calibrate the trust score on after the "
        "export; held-out frames of the training domain are better than the training frames "
        "the model has seen (default: the training LR folder, when it exists; up to 64 "
        "frames).",
    ),
    trust_calibration: bool = typer.Option(
        True, help="Calibrate the trust score after the export (--no-trust-calibration: not)."
    ),
) -> None:
    """FP32 ONNX with dynamic batch/height/width, parity-checked against PyTorch; for
    InstanceNorm generators also the frozen-statistics stats/tile graphs (seam-free tiling);
    then the trust calibration (see `cyclesr export trust`)."""
    from cyclesr_deploy.errors import InputError
    from cyclesr_deploy.export.trust import default_data

    table = _table()
    with _export_errors():
        wants_frozen = _wants_frozen(model_dir, direction, frozen)
        check = wants_frozen and direction == "ab"  # the deployed direction only
        frames = _check_frames(model_dir, check_frame) if check else None
        path = _onnx(model_dir, direction, exporter, overwrite, table)
        if fp16 and direction == "ab":
            _fp16(path, overwrite, table)
        if wants_frozen:
            _frozen(model_dir, direction, overwrite, table, frames)
        if direction == "ab" and trust_calibration:
            try:
                _trust(model_dir, trust_data or default_data(model_dir), "auto", None, table)
            except InputError as exc:  # the exported artifacts stand; only --trust-data fails
                if trust_data is not None:
                    raise
                table.add_row("trust", "-", "-", "-", f"skipped: {exc}", "-")
                err.print(f"[yellow]trust not calibrated[/]: {escape(str(exc))}", highlight=False)
    out.print(table)


_TILE = typer.Option(None, help="Tile edge, px (default 512).")
_BATCH = typer.Option(None, help="Tiles per call (default 4).")
_PRECISION = typer.Option(None, help="fp16 (default) or fp32.")
_DYNAMIC = typer.Option(None, "--dynamic/--static", help="Dynamic profile (default static).")


@app.command("tensorrt")
def tensorrt_cmd(
    model_dir: Path = _MODEL,
    tile: int | None = _TILE,
    batch: int | None = _BATCH,
    precision: str | None = _PRECISION,
    dynamic: bool | None = _DYNAMIC,
    min_tile: int | None = typer.Option(None, help="Dynamic profile minimum tile."),
    max_tile: int | None = typer.Option(None, help="Dynamic profile maximum tile."),
    opt_level: int | None = typer.Option(None, help="Builder optimization level 0-5 (3)."),
    workspace_gib: float | None = typer.Option(None, help="Workspace limit, GiB (4)."),
    overwrite: bool = _OVERWRITE,
    frozen: bool = typer.Option(
        False,
        "--frozen/--no-frozen",
        help="Instead: the two FP32 engines of seam-free tiling (statistics engine for --frame, "
        "tile engine for --tile/--batch) from generator.stats/tile.onnx.",
    ),
    frame: tuple[int, int] = typer.Option(
        (2048, 2048), "--frame", help="--frozen: the acquisition's frame height and width, px."
    ),
) -> None:
    """TensorRT engine (+ JSON sidecar) for this GPU; skipped when an identical one exists."""
    table = _table()
    with _export_errors():
        if frozen and precision is None:
            precision = "fp32"
        cfg = _trt_config(
            tile, batch, precision, dynamic, min_tile, max_tile, opt_level, workspace_gib
        )
        if frozen:
            _tensorrt_frozen(model_dir, cfg, frame, overwrite, table)
        else:
            _tensorrt(model_dir, cfg, overwrite, table)
    out.print(table)


@app.command("all")
def all_cmd(
    model_dir: Path = _MODEL,
    tile: int | None = _TILE,
    batch: int | None = _BATCH,
    precision: str | None = _PRECISION,
    dynamic: bool | None = _DYNAMIC,
    frozen: bool | None = _FROZEN,
    check_frame: Path | None = _CHECK_FRAME,
    overwrite: bool = _OVERWRITE,
) -> None:
    """ONNX, FP16 ONNX, the frozen-statistics stats/tile graphs (InstanceNorm generators) and,
    where TensorRT is installed, the engine; writes export.json."""
    table = _table()
    with _export_errors():
        cfg = _trt_config(tile, batch, precision, dynamic, None, None, None, None)
        wants_frozen = _wants_frozen(model_dir, "ab", frozen)
        frames = _check_frames(model_dir, check_frame) if wants_frozen else None
        path = _onnx(model_dir, "ab", "dynamo", overwrite, table)
        _fp16(path, overwrite, table)
        if wants_frozen:
            _frozen(model_dir, "ab", overwrite, table, frames)
        if importlib.util.find_spec("tensorrt") is not None:
            _tensorrt(model_dir, cfg, overwrite, table)
        else:
            table.add_row("TensorRT", "-", "-", "-", "skipped: tensorrt not installed", "-")
    out.print(table)
    out.print(f"report: {Path(model_dir) / 'export.json'}")


@app.command("check")
def check_cmd(model_dir: Path = _MODEL, check_frame: Path | None = _CHECK_FRAME) -> None:
    """Report the trust calibration's state (ok / stale: why / missing); check the crops
    statistics estimate of frozen tiling against whole-frame inference and write
    frozen_stats.json, which `enhance --stats auto` follows (export onnx does this too)."""
    from cyclesr_deploy.errors import InputError

    table = _table()
    with user_errors():
        _trust_state(model_dir, table)
        frames = _check_frames(model_dir, check_frame)
        if frames is None:
            raise InputError(
                f"{model_dir}: only 1-channel InstanceNorm generators have frozen statistics"
            )
        _check(model_dir, table, frames)
    out.print(table)


@app.command("trust")
def trust_cmd(
    model_dir: Path = typer.Argument(..., help="Model folder or built-in model name."),
    data: Path | None = typer.Option(
        None,
        help="In-domain LR frames: a TIFF/OME-TIFF/OME-Zarr file or stack, or a folder of them "
        "(default: the model's training LR folder, model.json provenance train_a).",
    ),
    backend: str = typer.Option("auto", help="Inference backend (as enhance)."),
    max_frames: int | None = typer.Option(
        None, min=1, help="Frames used, spread evenly over the data (default 64)."
    ),
) -> None:
    """Calibrate the per-frame trust score on in-domain frames: trust.json in the model
    folder, tied to the weights' sha256 (renew it after re-training or re-exporting)."""
    table = _table()
    with _export_errors():
        _trust(model_dir, data, backend, max_frames, table)
    out.print(table)


@app.command("bioimageio")
def bioimageio_cmd(
    model: str = typer.Argument(..., help="Model folder or built-in model name."),
    output: Path = typer.Option(
        ..., "--out", "-o", help="The package: a .zip file, or a folder for any other name."
    ),
    author: list[str] = typer.Option(
        None, "--author", help="An author's name (repeat for several; default: the project)."
    ),
    min_size: int | None = typer.Option(
        None, help="Smallest y/x tools may feed, px (default 256); sizes grow in steps of 4."
    ),
    test_size: int | None = typer.Option(None, help="Test tensors' y/x, px (default 256)."),
    name: str | None = typer.Option(
        None, help="Package name: 5-128 letters, digits, `_+- ()` (default: 'cyclesr MODEL-NAME')."
    ),
    license: str | None = typer.Option(
        None,
        "--license",
        help="SPDX licence id of the weights (required, except MIT for the built-in models).",
    ),
    overwrite: bool = typer.Option(
        False, help="Replace an existing package (file or package folder)."
    ),
) -> None:
    """BioImage Model Zoo package (bioimageio.spec 0.5): ONNX + PyTorch weights, the model's
    normalization, halo, test tensors from this runtime, cover, README; written only after
    bioimageio.core's offline CPU test passes (extra `bioimageio`)."""
    from cyclesr_deploy.export.bioimageio import export_bioimageio

    options = {
        "min_size": min_size,
        "test_size": test_size,
        "authors": tuple(author or ()),
        "name": name,
        "license": license,
    }
    status = err.status("building and testing the BioImage Model Zoo package ...")
    with _export_errors(), status:
        res = export_bioimageio(
            model, output, overwrite=overwrite, **{k: v for k, v in options.items() if v}
        )
    tests = ", ".join(f"{fmt} {status}" for fmt, status in res.tests.items())
    out.print(
        f"{escape(str(res.path))}: bioimageio model {res.format_version}, halo {res.halo} px, "
        f"bioimageio.core test: {tests} ({res.seconds:.1f} s)",
        highlight=False,
    )


@app.command("precision")
def precision_cmd(
    model_dir: Path = _MODEL,
    precision: list[str] = typer.Option(
        ["int8", "bf16"], "--precision", help="int8 and/or bf16; repeatable."
    ),
    frames: int = typer.Option(4, min=1, help="Synthetic test frames (LR + HR ground truth)."),
    size: int = typer.Option(512, min=64, help="Side of the test frames, LR px."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads of the engines."),
) -> None:
    """Write generator.int8.onnx (NNCF), measure int8/bf16 against FP32 with OpenVINO (speed,
    PSNR vs FP32, PSNR/SSIM change vs ground truth) and record them in export.json, which
    `--precision auto` follows (the quality gate of engines/precision.py)."""
    from cyclesr_deploy.export.precision_check import check_precisions

    def say(msg: str) -> None:
        err.print(f"[dim]{escape(msg)}[/]", highlight=False)

    with _export_errors():
        result = check_precisions(
            model_dir, precision, frames=frames, size=size, threads=threads, on_progress=say
        )
    for key, rec in result["records"].items():
        fails = rec.failures()
        verdict = "refused: " + "; ".join(fails) if fails else "passes the gate"
        out.print(f"{key}: {escape(rec.describe())} ({verdict})")
    for name, why in result["skipped"].items():
        out.print(f"{name}: skipped ({escape(why)})")
    out.print(f"report: {Path(model_dir) / 'export.json'}")
