"""``cyclesr enhance INPUT... -o OUTDIR``: super-resolve TIFF stacks with a model folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.text import Text

from cyclesr_deploy.cli._common import (
    EXIT_PARTIAL,
    STATS_HELP,
    TILING_HELP,
    TRUST_HELP,
    UNTRUSTED_HELP,
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
    openvino = "openvino"
    torch = "torch"
    tensorrt = "tensorrt"


class Precision(str, Enum):
    default = "default"
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


class Normalize(str, Enum):
    model = "model"
    frame = "frame"


class Tiling(str, Enum):
    auto = "auto"
    frozen = "frozen"
    naive = "naive"


class Untrusted(str, Enum):
    warn = "warn"
    mark = "mark"
    skip = "skip"
    fail = "fail"


class OutputFormat(str, Enum):
    same = "same"
    tiff = "tiff"
    zarr = "zarr"


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


def _frame_shapes(paths: list[Path]) -> list[tuple[int, int]]:
    """(H, W) of every readable input (headers only; unreadable files fail later, per file)."""
    from cyclesr_deploy.runtime.formats import open_frames

    shapes = set()
    for path in paths:
        try:
            with open_frames(path) as reader:
                shapes.add(tuple(int(d) for d in reader.info.frame_shape))
        except Exception:  # reported per file by the pipeline
            continue
    return sorted(shapes)


def _enhance_here(
    paths: list[Path],
    out_dir: Path,
    model: Path,
    model_cfg: Any,
    cfg: Any,
    backend: Backend,
    precision: Precision,
    threads: int | None,
    progress: Any,
    on_progress: Any,
    lock: Any,
) -> Any:
    """The single-process run: one engine in this process, the staged pipeline (the engine
    factory decides whether the run gets a frozen-statistics engine)."""
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.runtime.pipeline import enhance_files

    engine_cm = open_engine(
        model,
        backend=backend.value,
        precision=precision.value,
        threads=threads,
        tiling=cfg.engine_tiling,
        stats=cfg.stats,
        frames=lambda: _frame_shapes(paths),
    )
    with engine_cm as engine:
        selection = getattr(engine, "selection", None)
        reason = getattr(selection, "reason", selection)
        err.print(
            f"engine: {escape(engine.name)}" + (f" ({escape(str(reason))})" if reason else ""),
            highlight=False,
        )
        with progress:
            return enhance_files(
                paths, out_dir, engine, model_cfg, cfg, on_progress=on_progress, lock=lock
            )


def enhance(
    inputs: list[str] = typer.Argument(
        ...,
        help="TIFF files, OME-Zarr images (*.zarr), folders (their .tif/.tiff files and *.zarr "
        "images, not recursive) or glob patterns.",
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
        Backend.auto,
        help="Inference backend; auto picks TensorRT > ONNX Runtime GPU > torch CUDA > "
        "OpenVINO > ONNX Runtime CPU > torch.",
    ),
    precision: Precision = typer.Option(
        Precision.default,
        help="Numeric precision of the engine (default: FP16 on an NVIDIA GPU, FP32 on the "
        "CPU; auto: on the CPU with OpenVINO the fastest reduced precision recorded by "
        "`cyclesr export precision` within the quality gate, else as default).",
    ),
    threads: int | None = typer.Option(
        None,
        min=1,
        help="CPU threads of the engine (default: all cores; with --cluster local:N, cores/N "
        "per worker). OpenVINO's output depends on it (its reductions split by thread: up to "
        "1 uint16 level); ONNX Runtime's does not.",
    ),
    tile: int | None = typer.Option(
        None,
        min=0,
        help="Tile side in input px (multiple of 4); 0 = whole frame as one tile; default: "
        "sized to the machine (largest tile within --whole-max-px and free memory).",
    ),
    overlap: int | None = typer.Option(
        None, min=0, help="Overlap between tiles in input px (default: from the receptive field)."
    ),
    batch: int = typer.Option(4, min=1, help="Tiles per engine call (the tiles of one frame)."),
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
    output_format: OutputFormat = typer.Option(
        OutputFormat.same,
        help="Output format: same as the input, tiff (OME-TIFF) or zarr (OME-Zarr NGFF 0.5).",
    ),
    pyramid: int = typer.Option(
        0, min=0, max=16, help="OME-Zarr outputs: extra pyramid levels (each 2x smaller)."
    ),
    cluster: str | None = typer.Option(
        None,
        help="Run on a Dask cluster: local:N (N worker processes; one per GPU), a scheduler "
        "address (tcp://host:port) or a dask-jobqueue cluster file (.yaml); needs the dask "
        "extra. See docs/scale-out.md.",
    ),
    block: int = typer.Option(
        8, min=1, help="--cluster: frames per task for OME-Zarr outputs (TIFF: one file a task)."
    ),
    untrusted: Untrusted = typer.Option(Untrusted.warn, help=UNTRUSTED_HELP),
    trust: bool = typer.Option(True, "--trust/--no-trust", help=TRUST_HELP),
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
    from cyclesr_deploy.runtime.cluster import check_cluster
    from cyclesr_deploy.runtime.formats import check_extras
    from cyclesr_deploy.runtime.pipeline import (
        EnhanceConfig,
        ProgressEvent,
        check_paths,
        collect_inputs,
    )
    from cyclesr_deploy.runtime.trust_policy import check_trust

    with user_errors():
        model = resolve_model(model)
        paths = collect_inputs(inputs)
        check_paths(paths, out_dir, output_format.value)
        check_extras(paths, output_format.value)
        if cluster is not None:
            check_cluster(cluster)  # a bad spec, or no dask: exit 2 before anything loads
        cfg = EnhanceConfig(
            tile="auto" if tile is None else tile,
            overlap=overlap,
            batch=batch,
            normalize=normalize.value,
            overwrite=overwrite,
            tiling_mode=tiling.value,
            stats=stats,
            whole_max_px=whole_max_px,
            output_format=output_format.value,
            pyramid=pyramid,
            untrusted=untrusted.value,
            trust=trust,
        )
        model_cfg = load_model(model)
        if cfg.tile:
            cfg.tiling(model_cfg)  # bad --tile/--overlap: exit 2 before the engine loads
        check_trust(cfg, model_cfg, model)  # a stale or missing calibration: exit 2 now

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

    from cyclesr_deploy.runtime.manifest import OutputLock
    from cyclesr_deploy.runtime.pipeline import ENHANCE_COMMAND

    try:
        with user_errors(), OutputLock(out_dir, command=ENHANCE_COMMAND) as lock:
            # the lock first: a second run into this folder is refused before an engine loads
            if cluster is not None:  # the workers open the engines, the client none
                from cyclesr_deploy.runtime.cluster import EngineRecipe, enhance_on_cluster

                recipe = EngineRecipe.for_run(
                    model, cluster, backend.value, precision.value, cfg, _frame_shapes(paths),
                    threads,
                )  # fmt: skip
                err.print(f"cluster: {escape(cluster)}", highlight=False)
                with progress:
                    summary = enhance_on_cluster(
                        paths, out_dir, recipe, cfg, cluster=cluster, block=block,
                        on_progress=on_progress, lock=lock,
                    )  # fmt: skip
            else:
                summary = _enhance_here(
                    paths, out_dir, model, model_cfg, cfg, backend, precision, threads,
                    progress, on_progress, lock,
                )  # fmt: skip
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
    table.add_column("trust min / untrusted", justify="right")
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
            f"{f.trust['min']:.3g} / {len(f.trust['untrusted'])}" if f.trust else "-",
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
