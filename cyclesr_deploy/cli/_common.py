"""Helpers shared by the CLI commands: a stderr console and uniform error reporting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

#: Logs and progress go to stderr; results go to stdout or files.
err = Console(stderr=True)
out = Console()

EXIT_INPUT = 2  # bad input (same code typer/click use for usage errors)
EXIT_PARTIAL = 1  # some items failed, the others were processed

# help of the options ``enhance`` and ``watch`` share (the frame runner's settings)
TILING_HELP = (
    "InstanceNorm generators cut into tiles: frozen = frame-level statistics for "
    "every tile (seam-free; TensorRT engines from export tensorrt --frozen, onnxruntime "
    "with generator.stats/tile.onnx, or torch); naive = "
    "per-tile statistics; auto = whole-frame inference for frames within --whole-max-px, "
    "else frozen when available, else naive with a warning."
)
STATS_HELP = (
    "Frozen tiling's statistics estimate (ONNX Runtime, torch; TensorRT always uses "
    "the whole frame): crops = a pass over crops of ~20 % of the frame, pooled with "
    "calibrated weights (~0.1-0.15x the tile pass; 47-51 dB vs whole frame on the reference "
    "model), whole = over the whole frame (exact, costs a whole-frame pass), auto = the "
    "choice of the model's check (frozen_stats.json from export onnx: crops where they "
    "reached 47 dB on its check frame, else whole; crops without a check)."
)
WHOLE_MAX_PX_HELP = (
    "--tiling auto: frames up to this many pixels (padded) run whole, untiled (0 = always tile)."
)
UNTRUSTED_HELP = (
    "Frames the model's trust score flags (trust.json from `cyclesr export trust`): warn = one "
    "warning per file; mark = also list them in the output's metadata; skip = write zeros in "
    "their place (listed; a one-frame file is not written); fail = the file fails, no output. "
    "All but warn need a calibrated model."
)
TRUST_HELP = "Score every frame against the model's trust calibration (--no-trust: off)."
WHOLE_MAX_PX_DEFAULT = 2048 * 2048  # pipeline.WHOLE_MAX_PX (not imported: the CLI loads lazily)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library input errors into one red line on stderr and exit code 2 (no traceback)."""
    from pydantic import ValidationError

    from cyclesr_deploy.errors import InputError, MissingExtraError

    try:
        yield
    except (InputError, MissingExtraError, FileExistsError, ValidationError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_INPUT) from exc
    except OSError as exc:  # e.g. the target is open in another program (Windows), disk full
        err.print(f"[bold red]I/O error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_PARTIAL) from exc
