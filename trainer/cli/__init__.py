"""The `rlme` command line, one module per family: serving (serve, prepare), keys, scoring (score,
judge), calibration (calibrate), training (train, audit). It lives in the trainer part, the one
part that may call the other two; each command imports what it needs when it runs, so
`rlme serve` on an image without the training extras never loads them."""

from __future__ import annotations

from typing import Annotated

import typer

from rlme.trainer.cli import calibration, keys, scoring, serving, training

app = typer.Typer(add_completion=False, no_args_is_help=True, help="rlme: rewards from meta-evaluation.")


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"rlme {version('rlme')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """rlme: rewards from meta-evaluation."""


COMMANDS = (serving.serve, scoring.score, scoring.judge, serving.prepare, training.train, training.audit)
for command in (*COMMANDS, calibration.calibrate):
    app.command()(command)
app.add_typer(keys.app, name="keys")


def main() -> None:
    app()
