"""``cyclesr watch IN_DIR -o OUT_DIR [--model DIR]``: enhance frames as acquisition writes them."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from cyclesr_deploy.cli import _common as common
from cyclesr_deploy.cli._common import err, user_errors
from cyclesr_deploy.cli.enhance import Backend, Normalize, Precision, Tiling, Untrusted


class WhenBehind(str, Enum):
    queue = "queue"
    latest = "latest"


def _panel(status):  # a rich renderable for the live display
    from rich.table import Table

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f} ms"

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("frames in / done", f"{status.seen} / {status.done}")
    table.add_row("queued", str(status.queued))
    table.add_row("skipped / failed", f"{status.skipped} / {status.failed}")
    incomplete = ", ".join(status.incomplete_files[:3]) + (
        " ..." if len(status.incomplete_files) > 3 else ""
    )
    table.add_row("incomplete files", f"{status.incomplete} {escape(incomplete)}".strip())
    table.add_row("latency p50 / p95", f"{ms(status.p50)} / {ms(status.p95)}")
    table.add_row("  split (p50)", status.split_text())
    table.add_row("complete by", status.rules_text())
    table.add_row("trust (last) / untrusted", status.trust_text())
    table.add_row("frames/s", f"{status.fps:.2f}")
    table.add_row("backend", escape(status.backend))
    table.add_row("", "stopping..." if status.stopping else "Ctrl+C to stop")
    return table


def watch(
    in_dir: Path = typer.Argument(..., help="Folder the acquisition software writes into."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Model folder or built-in name (default: reference-cyclegan)."
    ),
    backend: Backend = typer.Option(Backend.auto, help="Inference backend."),
    precision: Precision = typer.Option(
        Precision.default, help="Engine precision (as `cyclesr enhance --precision`)."
    ),
    tile: int | None = typer.Option(
        None, min=0, help="Tile side in input px; 0 = whole frame; default: sized to the machine."
    ),
    overlap: int | None = typer.Option(None, min=0, help="Tile overlap in input px."),
    batch: int = typer.Option(4, min=1, help="Tiles per engine call."),
    normalize: Normalize = typer.Option(Normalize.model, help="Intensity normalization."),
    tiling: Tiling = typer.Option(Tiling.auto, help=common.TILING_HELP),
    stats: str = typer.Option("auto", help=common.STATS_HELP),
    whole_max_px: int = typer.Option(
        common.WHOLE_MAX_PX_DEFAULT, min=0, help=common.WHOLE_MAX_PX_HELP
    ),
    poll: float = typer.Option(
        0.5, min=0.01, help="Seconds between folder scans (besides the filesystem events)."
    ),
    stable: float = typer.Option(
        1.0,
        min=0.0,
        help="Seconds a file's size must stay unchanged before it counts as complete; only for "
        "files whose completeness cannot be known otherwise (no page count announced, not "
        "renamed into place).",
    ),
    idle: float = typer.Option(
        30.0, min=0.1, help="Close (rename) a growing stack's output after this many idle seconds."
    ),
    when_behind: WhenBehind = typer.Option(
        WhenBehind.queue,
        help="queue: process every frame in order; latest: always the newest frame, older "
        "waiting ones are marked skipped in the manifest (enhance them later).",
    ),
    queue_size: int = typer.Option(64, min=1, help="Backlog (frames) that triggers a warning."),
    polling: bool = typer.Option(
        False,
        "--polling",
        help="Polling only, no filesystem events (network shares deliver none; renamed files "
        "then wait --stable unless their metadata announce the page count).",
    ),
    exit_idle: float | None = typer.Option(
        None, min=0.1, help="Stop by itself after this many seconds with nothing to do."
    ),
    status_every: float = typer.Option(
        5.0, min=0.1, help="Seconds between status lines when not in a terminal."
    ),
    untrusted: Untrusted = typer.Option(Untrusted.warn, help=common.UNTRUSTED_HELP),
    trust: bool = typer.Option(True, "--trust/--no-trust", help=common.TRUST_HELP),
) -> None:
    """Watch IN_DIR and enhance each frame as soon as it is completely written.

    Frame files (one frame per file) and growing stacks (pages appended) are both handled;
    outputs go to OUT_DIR under the input's name and never appear half written. Stops on
    Ctrl+C (SIGINT) or SIGTERM: the frame in flight is finished, open stacks are closed,
    the manifest is written; running it again resumes without repeating work. Exit code 0
    when every frame succeeded, 1 when some failed or stayed incomplete (as enhance), 2 for
    bad arguments.
    """
    from cyclesr_deploy.builtin import resolve_model
    from cyclesr_deploy.engines import open_engine
    from cyclesr_deploy.model import load_model
    from cyclesr_deploy.runtime.manifest import OutputLock
    from cyclesr_deploy.runtime.runner import EnhanceConfig
    from cyclesr_deploy.runtime.trust_policy import check_trust
    from cyclesr_deploy.runtime.watch import (
        WATCH_COMMAND,
        WatchConfig,
        WatchStatus,
        check_watch_paths,
        watch_folder,
    )

    with user_errors():
        ecfg = EnhanceConfig(
            tile="auto" if tile is None else tile,
            overlap=overlap,
            batch=batch,
            normalize=normalize.value,
            tiling_mode=tiling.value,
            stats=stats,
            whole_max_px=whole_max_px,
            untrusted=untrusted.value,
            trust=trust,
        )
        wcfg = WatchConfig(
            poll=poll,
            stable=stable,
            idle=idle,
            when_behind=when_behind.value,
            queue_size=queue_size,
            use_events=not polling,
            exit_idle=exit_idle,
        )
        model = resolve_model(model)
        model_cfg = load_model(model)
        if ecfg.tile:
            ecfg.tiling(model_cfg)
        check_trust(ecfg, model_cfg, model)  # a stale or missing calibration: exit 2 now
        check_watch_paths(in_dir, out_dir)

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second Ctrl+C: stop now (the frame in flight is discarded)
            raise KeyboardInterrupt
        logging.getLogger("cyclesr_deploy").info(
            "stopping (signal %s): finishing the frame in flight", signum
        )
        stop.set()

    previous = {}
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):  # SIGBREAK: Ctrl+Break on Windows
        sig = getattr(signal, name, None)
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):  # not the main thread / platform
                previous[sig] = signal.signal(sig, _on_signal)

    live = None
    if err.is_terminal:
        from rich.live import Live

        live = Live(console=err, refresh_per_second=4, transient=False)

    def on_status(status: WatchStatus) -> None:
        if live is not None:
            live.update(_panel(status))
        else:
            err.print(escape(status.line()), highlight=False)

    try:
        with (
            user_errors(),
            OutputLock(out_dir, command=WATCH_COMMAND) as lock,  # refused before an engine loads
            open_engine(
                model,
                backend=backend.value,
                precision=precision.value,
                tiling=ecfg.engine_tiling,
                stats=ecfg.stats,
            ) as engine,
        ):
            err.print(f"engine: {escape(engine.name)}; watching {escape(str(in_dir))}")
            if live is not None:
                live.start()
            try:
                final = watch_folder(
                    in_dir,
                    out_dir,
                    engine,
                    model_cfg,
                    wcfg,
                    ecfg,
                    stop=stop,
                    on_status=on_status,
                    status_every=0.25 if live is not None else status_every,
                    lock=lock,
                )
            finally:
                if live is not None:
                    live.stop()
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: the frame in flight was discarded")
        raise typer.Exit(130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    err.print(f"stopped: {escape(final.line())}", highlight=False)
    if final.incomplete:
        err.print(
            "[yellow]incomplete files[/] (never completely written): "
            + escape(", ".join(final.incomplete_files))
        )
    if not final.ok:
        err.print(
            f"[red]{final.failed} frame(s) failed[/], {final.incomplete} file(s) incomplete: "
            f"see {escape(str(out_dir))}/cyclesr-manifest.json"
        )
        raise typer.Exit(common.EXIT_PARTIAL)
