"""`rlme score` and `rlme judge`: one (prompt, response) scored or judged, on a running service
(--url) or in process with the evaluator loaded here."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from rlme.trainer.cli.common import ConfigOption, load_settings, post_in_process


def score(
    prompt: Annotated[str, typer.Option(help="The prompt the response answers.")],
    response: Annotated[str, typer.Option(help="The response to judge.")],
    question: Annotated[list[str] | None, typer.Option(help="A meta-question; repeat for several.")] = None,
    rubric: Annotated[str | None, typer.Option(help="A rubric name instead of --question.")] = None,
    reference: Annotated[str | None, typer.Option(help="Ground truth or context.")] = None,
    url: Annotated[
        str | None, typer.Option(help="Score on a running service instead of loading a model here.")
    ] = None,
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(help="Evaluator model (in-process only).")] = None,
) -> None:
    """Score one (prompt, response) and print p_yes per question and the reward as JSON."""
    from rlme.client.wire import MetaQuestion, RewardRequest

    questions = None
    if question:
        questions = [MetaQuestion(id=f"q{i + 1}", text=text) for i, text in enumerate(question)]
    elif rubric is None:
        rubric = "correctness"
    request = RewardRequest(
        items=[{"prompt": prompt, "response": response, "reference": reference}],  # type: ignore[list-item]
        questions=questions,
        rubric=rubric,
    )
    if url is not None:
        from rlme.client import RewardClient

        with RewardClient(base_url=url) as client:
            result = client.rewards(request.items, questions=request.questions, rubric=request.rubric)
    else:
        result = score_in_process(load_settings(config, model), request)
    typer.echo(json.dumps(result.model_dump(), indent=2))


def score_in_process(settings, request):  # type: ignore[no-untyped-def]
    from rlme.client.wire import RewardResponse

    return post_in_process(settings, "/v1/rewards", request, RewardResponse)


def judge(
    prompt: Annotated[str, typer.Option(help="The prompt the response answers.")],
    response: Annotated[str, typer.Option(help="The response to judge.")],
    judge_name: Annotated[str, typer.Option("--judge", help="A named pointwise judge.")] = "additive_5",
    samples: Annotated[int, typer.Option(help="Judgments to write.")] = 1,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    max_tokens: Annotated[int | None, typer.Option(help="Rationale length limit.")] = None,
    reference: Annotated[str | None, typer.Option(help="For judges whose template uses {reference}.")] = None,
    url: Annotated[
        str | None, typer.Option(help="Judge on a running service instead of loading a model.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole response as JSON.")] = False,
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(help="Evaluator model (in-process only).")] = None,
) -> None:
    """Judge one (prompt, response): print each rationale, its verdict distribution and the score."""
    from rlme.client.wire import JudgmentRequest, JudgmentResponse

    request = JudgmentRequest(
        items=[{"prompt": prompt, "response": response, "reference": reference}],  # type: ignore[list-item]
        judge=judge_name,
        samples=samples,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    if url is not None:
        from rlme.client import RewardClient

        with RewardClient(base_url=url) as client:
            result = client.judgments(
                request.items, **request.model_dump(exclude={"items"}, exclude_none=True)
            )
    else:
        result = post_in_process(load_settings(config, model), "/v1/judgments", request, JudgmentResponse)
    if as_json:
        typer.echo(json.dumps(result.model_dump(), indent=2))
        return
    item = result.results[0]
    for n, judgment in enumerate(item.judgments, 1):
        typer.echo(f"--- judgment {n} ({judgment.status}, {judgment.generated_tokens} tokens)")
        typer.echo(judgment.rationale.strip())
        probs = "  ".join(f"{label}: {p:.3f}" for label, p in judgment.verdict_probs.items())
        typer.echo(f"verdict probabilities: {probs}  (label mass {judgment.label_mass:.3f})")
        stated = (
            judgment.parsed_verdict
            if judgment.parsed_verdict is not None
            else f"none ({judgment.parse_error})"
        )
        typer.echo(f"expected score: {judgment.expected_score}  stated verdict: {stated}")
    typer.echo(f"=== score {item.score}  reward {item.reward}  status {item.status}  mask {item.mask}")
