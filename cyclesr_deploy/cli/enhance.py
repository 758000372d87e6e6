"""``cyclesr enhance INPUT... -o OUTDIR``: super-resolve TIFF stacks with a model folder."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.text import Text

from cyclesr_deploy.cli._common import (
    EXIT_PARTIAL,
    STATS_HELP,
    TILING_HELP,
    WHOLE_MAX_PX_DEFAULT,
    WHOLE_MAX_PX_HELP,
    err,
    out,
    user_errors,
)

EXIT_INTERRUPTED = 130  # the shell's code for SIGINT


class Backend(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    torch = "torch"
    tensorrt = "tensorrt"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"


class Normalize(str, Enum):
    model = "model"
    frame = "frame"


class Tiling(str, Enum):
    auto = "auto"
    frozen = "frozen"
    naive = "naive"


class _RateColumn(ProgressColumn):
    """Frames/s from rich's speed estimate, and Mpx/s from the megapixels done so far."""

    def render(self, task: Task) -> Text:
        fps = task.speed or 0.0
        elapsed = task.elapsed or 0.0
        mpx = task.fields.get("mpx", 0.0)
        mpx_s = mpx / elapsed if elapsed > 0 else 0.0
        return Text(f"{fps:6.2f} frames/s {mpx_s:7.2f} Mpx/s", style="progress.data.speed")


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}"


def _gpu_backend_usable(model_dir: Path, precision: str) -> bool:
    """Whether ``--backend auto`` would pick a GPU engine (the ONNX Runtime and torch
    frozen-statistics engines here run on the CPU): auto selection reaches PyTorch CUDA's
    rejection only on the way to CPU."""
    from cyclesr_deploy.engines import open_engine

    selection = getattr(
        open_engine(model_dir, backend="auto", precision=precision), "selection", None
    )
    rejected = getattr(selection, "rejected", None)
    if rejected is None:  # an engine without a Selection (e.g. a test double): assume CPU
        return False
    return not any(label == "torch-cuda" for label, _ in rejected)


def _frame_shapes(paths: list[Path]) -> list[tuple[int, int]]:
    """(H, W) of every readable input (headers only; unreadable files fail later, per file)."""
    from cyclesr_deploy.frames import open_frames

    shapes = set()
    for path in paths:
        try:
            with open_frames(path) as reader:
                shapes.add(tuple(int(d) for d in reader.info.frame_shape))
        except Exception:  # reported per file by the pipeline
            continue
    return sorted(shapes)


def _tensorrt_frozen(model_dir: Path, paths: list[Path], *, required: bool):
    """The TensorRT frozen-statistics engine, opened, when TensorRT and two engines for this GPU
    and for every input's frame size are there; else None (``required``: with a warning that
    says how to build them)."""
    import importlib.util

    from cyclesr_deploy.engines.frozen import open_frozen_engine

    if importlib.util.find_spec("tensorrt") is None:
        return None
    engine = None
    try:
        engine = open_frozen_engine(model_dir, "tensorrt", frames=_frame_shapes(paths))
        engine.open()
        return engine
    except Exception as exc:  # no engines, other sizes, other GPU, no CUDA device, no memory
        if engine is not None:
            engine.close()
        if required:
            err.print(f"[yellow]warning[/]: {escape(str(exc))}", highlight=False)
        return None


def _frozen_engine(
    model_dir: Path, model_cfg, cfg, backend: str, precision: str, paths: Sequence[Path] = ()
):
    """The frozen-statistics engine for a tiled run of an InstanceNorm generator, or None for
    the ordinary engine (``--tiling naive``, tile 0, no InstanceNorm, or ``auto`` where none
    is available: the pipeline then warns that tiles are normalised independently)."""
    from cyclesr_deploy.engines.frozen import frozen_graphs_missing, open_frozen_engine

    if cfg.tiling_mode == "naive" or model_cfg.generator.norm != "instance":
        return None
    if cfg.tiling_mode == "frozen":
        frames = _frame_shapes(list(paths)) if backend == "tensorrt" else ()
        return open_frozen_engine(
            model_dir, backend, precision=precision, stats=cfg.stats, frames=frames
        )
    if not cfg.tile:  # auto: whole frames need no frozen statistics
        return None
    if backend in ("auto", "tensorrt") and precision in ("auto", "fp32"):
        engine = _tensorrt_frozen(model_dir, list(paths), required=backend == "tensorrt")
        if engine is not None:
            return engine
    missing = frozen_graphs_missing(model_dir)
    if backend == "torch":
        return open_frozen_engine(model_dir, "torch", precision=precision, stats=cfg.stats)
    if backend in ("auto", "onnxruntime") and precision in ("auto", "fp32"):
        if backend == "auto" and _gpu_backend_usable(model_dir, precision):
            return None  # a GPU engine beats CPU frozen statistics; tiles get a warning
        if missing is None:
            return open_frozen_engine(model_dir, "onnxruntime", stats=cfg.stats)
        if backend == "onnxruntime":
            err.print(f"[yellow]warning[/]: {escape(missing)}", highlight=False)
    return None


def enhance(
    inputs: list[str] = typer.Argument(
        ..., help="TIFF files, folders (their .tif/.tiff files, not recursive) or glob patterns."
    ),
    out_dir: Path = typer.Option(
        ..., "-o", "--out", help="Output folder (created; must not be an input's folder)."
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model folder (model.json + exported weights) or a built-in model name "
        "(reference-cyclegan, reference-supervised); default: reference-cyclegan.",
    ),
    backend: Backend = typer.Option(
        Backend.auto, help="Inference backend; auto picks TensorRT > ONNX Runtime > torch."
    ),
    precision: Precision = typer.Option(
        Precision.auto, help="Numeric precision of the engine (auto: the backend's default)."
    ),
    tile: int = typer.Option(
        512, min=0, help="Tile side in input px (multiple of 4); 0 = whole frame as one tile."
    ),
    overlap: int | None = typer.Option(
        None, min=0, help="Overlap between tiles in input px (default: from the receptive field)."
    ),
    batch: int = typer.Option(4, min=1, help="Tiles per engine call (across frames of a stack)."),
    normalize: Normalize = typer.Option(
        Normalize.model,
        help="Intensity normalization: model = the training data's percentiles; frame = "
        "percentiles of each whole frame.",
    ),
    overwrite: bool = typer.Option(
        False, help="Re-process inputs whose output exists (default: skip them)."
    ),
    tiling: Tiling = typer.Option(Tiling.auto, help=TILING_HELP),
    stats: str = typer.Option("auto", help=STATS_HELP),
    whole_max_px: int = typer.Option(WHOLE_MAX_PX_DEFAULT, min=0, help=WHOLE_MAX_PX_HELP),
) -> None:
    """Enhance TIFF/OME-TIFF images and stacks (2-D, TYX, ZYX, TZYX), frame by frame.

    Each INPUT is written to OUTDIR under the same name, with its axes and metadata and the
    pixel size divided by the model's scale. Inputs whose output exists are skipped (see
    OUTDIR/cyclesr-manifest.json). Exit code 0 when every input succeeded, 1 when some failed,
    2 for bad arguments.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.model import load_model
    from cyclesr_deploy.pipeline import (
        EnhanceConfig,
        ProgressEvent,
        check_paths,
        collect_inputs,
        enhance_files,
    )

    with user_errors():
        model = resolve_model(model)
        paths = collect_inputs(inputs)
        check_paths(paths, out_dir)
        cfg = EnhanceConfig(
            tile=tile,
            overlap=overlap,
            batch=batch,
            normalize=normalize.value,
            overwrite=overwrite,
            tiling_mode=tiling.value,
            stats=stats,
            whole_max_px=whole_max_px,
        )
        model_cfg = load_model(model)
        if cfg.tile:
            cfg.tiling(model_cfg)  # bad --tile/--overlap: exit 2 before the engine loads

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )
    task = progress.add_task("frames", total=0, mpx=0.0)

    def on_progress(event: ProgressEvent) -> None:
        if event.kind == "start":
            total = (progress.tasks[0].total or 0) + event.n_frames
            progress.update(task, total=total, description=escape(event.path.name))
        elif event.kind == "frame":
            mpx = progress.tasks[0].fields["mpx"] + event.megapixels
            progress.update(task, advance=1, mpx=mpx)
        elif event.result is not None and event.result.status == "failed":
            err.print(
                f"[red]failed[/] {escape(event.path.name)}: {escape(event.result.error or '')}",
                highlight=False,
            )

    from cyclesr_deploy.engines import open_engine

    try:
        with user_errors():
            engine_cm = _frozen_engine(model, model_cfg, cfg, backend.value, precision.value, paths)
            if engine_cm is None:
                engine_cm = open_engine(model, backend=backend.value, precision=precision.value)
            with engine_cm as engine:
                selection = getattr(engine, "selection", None)
                reason = getattr(selection, "reason", selection)
                err.print(
                    f"engine: {escape(engine.name)}"
                    + (f" ({escape(str(reason))})" if reason else ""),
                    highlight=False,
                )
                with progress:
                    summary = enhance_files(
                        paths, out_dir, engine, model_cfg, cfg, on_progress=on_progress
                    )
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted[/]: finished outputs are kept, the one in progress was "
            "discarded; run again to continue"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None

    table = Table(
        title=f"{summary.count('done')} done, {summary.count('skipped')} skipped, "
        f"{summary.count('failed')} failed  ({summary.engine})",
        title_justify="left",
    )
    table.add_column("file")
    table.add_column("frames", justify="right")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    table.add_column("note")
    style = {"done": "green", "skipped": "yellow", "failed": "red"}
    for f in summary.files:
        note = f.error or f.note or ""
        note = note.removeprefix(f"{f.input}: ")  # the file column names it
        table.add_row(
            escape(Path(f.input).name),
            str(f.frames),
            f"[{style[f.status]}]{f.status}[/]",
            _fmt_s(f.seconds),
            escape(note),
        )
    out.print(table)
    if summary.frames:
        rate = summary.frames / summary.seconds if summary.seconds else float("inf")
        mpx = summary.megapixels / summary.seconds if summary.seconds else float("inf")
        err.print(
            f"{summary.frames} frame(s) in {summary.seconds:.2f} s: {rate:.2f} frames/s, "
            f"{mpx:.2f} Mpx/s -> {escape(str(out_dir))}",
            highlight=False,
        )
    if not summary.ok:
        raise typer.Exit(EXIT_PARTIAL)
