"""`rlme train` and `rlme audit`: a GRPO or Meta-Rewarding run from a config file; the S-Corr
audit of a judge against a running service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML or JSON file of TrainConfig fields.")],
) -> None:
    """Train a policy on the service's rewards: GRPO + CISPO (docs/trainer.md), or Meta-Rewarding's
    iterative DPO with `algorithm: meta_rewarding` in the file (docs/meta_rewarding.md)."""
    import yaml

    values = yaml.safe_load(config.read_text()) or {}
    if isinstance(values, dict) and values.get("algorithm") == "meta_rewarding":
        from rlme.trainer.dpo import main as train_main
    else:
        from rlme.trainer.grpo import main as train_main
    train_main(str(config))


def audit(
    data: Annotated[
        Path, typer.Option(help="JSONL: prompt, response_a, response_b, label (A|B), gold_rationale.")
    ],
    output: Annotated[Path, typer.Option(help="Folder for audit.json, audit.md, audit.png.")] = Path(
        "runs/audit"
    ),
    judge_name: Annotated[
        str | None, typer.Option("--judge", help="A pairwise judge; default 'pairwise'.")
    ] = None,
    evaluator: Annotated[
        str | None,
        typer.Option(help="Evaluator the judge runs on (e.g. a trained one); default: the default."),
    ] = None,
    aligner: Annotated[
        str | None, typer.Option(help="Evaluator that checks the rationale; default: the default.")
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="P(aligned) from which a rationale counts as aligned.")
    ] = 0.5,
    max_tokens: Annotated[int, typer.Option(help="Rationale length limit.")] = 128,
    url: Annotated[
        str | None, typer.Option(help="The service; default $RLME_BASE_URL, else 127.0.0.1:8000.")
    ] = None,
) -> None:
    """S-Corr audit of a judge (R-Align): label accuracy, and whether its reasons match the gold ones.

    Resumable: an interrupted audit continues from OUTPUT/audit.partial.jsonl."""
    from tqdm import tqdm

    from rlme.client import RewardClient
    from rlme.trainer.audit import read_rows, run_audit

    try:
        total = len(read_rows(data))
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    bar = tqdm(total=total, desc="audit")

    def progress(done: int, _: int) -> None:
        bar.update(done - bar.n)

    with RewardClient(base_url=url, timeout=3600) as client:
        client.wait_until_ready(timeout=300)
        report = run_audit(
            client,
            data,
            output,
            judge_name,
            aligner,
            threshold,
            max_tokens,
            progress=progress,
            evaluator=evaluator,
        )
    bar.close()
    numbers = "  ".join(
        f"{name} {report['overall'][name]}" for name in ("label_accuracy", "s_corr", "f_score")
    )
    typer.echo(f"{numbers}  -> {output / 'audit.md'}")
