"""The ``cyclesr`` command line. Thin: parse, build a config, call one library function.

Each command lives in its own module and imports the library lazily, so ``cyclesr --help`` works
with only the core dependencies installed.
"""

from __future__ import annotations

import typer

from cyclesr_deploy import __version__
from cyclesr_deploy.cli import bench, demo, enhance, export, metrics, synth, train, watch

app = typer.Typer(
    name="cyclesr",
    help="Deep-learning super-resolution for confocal microscopes (unpaired CycleGAN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cyclesr-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Deep-learning super-resolution for confocal microscopes (unpaired CycleGAN)."""
    _setup_logging()


def _setup_logging() -> None:
    """Library warnings (logger ``cyclesr_deploy``) go to stderr through rich, once."""
    import logging

    from rich.logging import RichHandler

    from cyclesr_deploy.cli._common import err

    logger = logging.getLogger("cyclesr_deploy")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


app.command("synth")(synth.synth)
app.command("metrics")(metrics.metrics)
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.add_typer(export.app, name="export")
app.command("enhance")(enhance.enhance)
app.command("watch")(watch.watch)
app.add_typer(bench.app, name="bench")


def main() -> None:
    app()
