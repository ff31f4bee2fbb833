"""`rlme calibrate`: fit p_yes calibrations on a running service from labelled items."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def calibrate(
    data: Annotated[Path, typer.Option(help="JSONL: prompt, response, label (true|false), reference?")],
    question: Annotated[
        list[str] | None, typer.Option(help="A meta-question's text (repeat for several); or --rubric.")
    ] = None,
    rubric: Annotated[str | None, typer.Option(help="A rubric on the server.")] = None,
    evaluator: Annotated[str | None, typer.Option(help="Default: the server's default evaluator.")] = None,
    held_out: Annotated[float, typer.Option(help="Share of each label held out for ECE.")] = 0.25,
    url: Annotated[
        str | None, typer.Option(help="The service; default $RLME_BASE_URL, else 127.0.0.1:8000.")
    ] = None,
) -> None:
    """Fit p_yes calibrations from labelled items (POST /v1/calibrations; admin key).

    Requests with `calibrated: true` then get p_yes_calibrated beside p_yes."""
    from rlme.client import RewardClient

    if (question is None) == (rubric is None):
        raise typer.BadParameter("give --question (one or more) or --rubric")
    try:
        items = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{data}: {exc}") from None
    questions = None if question is None else [{"id": f"q{i}", "text": t} for i, t in enumerate(question)]
    with RewardClient(base_url=url, timeout=3600) as client:
        client.wait_until_ready(timeout=300)
        fitted = client.calibrate(
            items, questions=questions, rubric=rubric, evaluator=evaluator, held_out_fraction=held_out
        )
    typer.echo(f"{'evaluator/question':40s} {'a':>6s} {'b':>6s}  ECE before -> after   Brier before -> after")
    for fit in fitted.calibrations:
        name = f"{fit.evaluator}/{fit.question}"[:40]
        typer.echo(
            f"{name:40s} {fit.a:6.2f} {fit.b:6.2f}  {fit.ece_before:.3f} -> {fit.ece_after:.3f}"
            f"        {fit.brier_before:.3f} -> {fit.brier_after:.3f}  ({fit.held_out_items} held out)"
        )
