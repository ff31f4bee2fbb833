"""The `rlme` command's entry point: the CLI (rlme.trainer.cli) needs the service's packages,
which the client-only install (`pip install rlme`) does not bring; say so in one line instead
of a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from rlme.trainer.cli import main as cli
    except ModuleNotFoundError as exc:
        sys.exit(
            f"rlme: the command line needs the service ({exc.name} is missing): pip install 'rlme[service]'"
        )
    cli()
