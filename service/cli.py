"""The `rlme` command: serve, score once, prepare the embedded model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

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


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (else $RLME_CONFIG).")
]


def config_error(exc: Exception, config: Path | None) -> typer.Exit:
    """One clear message for a configuration that cannot work, instead of a traceback."""
    from pydantic import ValidationError

    source = config or os.environ.get("RLME_CONFIG") or "the defaults and RLME_* variables"
    if isinstance(exc, ValidationError):
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            given = f" (got {error['input']!r})" if error["type"] != "missing" else ""
            lines.append(f"  {where}: {error['msg']}{given}")
        detail = "\n".join(lines)
    else:
        detail = f"  {exc}"
    typer.echo(f"rlme: the configuration from {source} is not valid:\n{detail}", err=True)
    return typer.Exit(2)


def _settings(config: Path | None, model: str | None = None, **overrides: object):  # type: ignore[no-untyped-def]
    import yaml
    from pydantic import ValidationError

    from rlme.service.settings import Settings

    try:
        settings = Settings.load(config, **overrides)
    except (ValidationError, ValueError, OSError, yaml.YAMLError) as exc:
        raise config_error(exc, config) from None
    if model is not None:
        first = settings.evaluators[0].model_copy(update={"model": model})
        settings = settings.model_copy(update={"evaluators": [first, *settings.evaluators[1:]]})
    return settings


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Default 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option(help="Default 8000.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model of the first evaluator: 'embedded', a folder or .gguf.")
    ] = None,
) -> None:
    """Run the reward service."""
    import uvicorn

    from rlme.service.app import create_app
    from rlme.service.logs import configure_logging

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = _settings(config, model, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    try:
        app_ = create_app(settings)  # builds every evaluator's backend: bad options fail here
    except ValueError as exc:
        raise config_error(exc, config) from None
    uvicorn.run(
        app_,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep ours
        log_level=settings.log_level,
        # On SIGTERM: stop accepting, let accepted requests finish, then stop the batchers.
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


@app.command()
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
        result = _score_in_process(_settings(config, model), request)
    typer.echo(json.dumps(result.model_dump(), indent=2))


def _score_in_process(settings, request):  # type: ignore[no-untyped-def]
    from rlme.client.wire import RewardResponse

    return _post_in_process(settings, "/v1/rewards", request, RewardResponse)


def _post_in_process(settings, path, request, response_model):  # type: ignore[no-untyped-def]
    """Start the app here (evaluators loaded), POST one request through it, parse the answer."""
    import asyncio

    import httpx

    from rlme.service.app import create_app

    async def run():  # type: ignore[no-untyped-def]
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await app.state.loading
            if not app.state.pool.ready:
                raise typer.BadParameter("the evaluator failed to load; see the log above")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://rlme", timeout=None) as client:
                body = request.model_dump(mode="json", exclude_none=True)
                answer = await client.post(path, json=body)
                if answer.status_code != 200:
                    raise typer.BadParameter(answer.text)
                return response_model.model_validate(answer.json())

    return asyncio.run(run())


@app.command()
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
        result = _post_in_process(_settings(config, model), "/v1/judgments", request, JudgmentResponse)
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


@app.command()
def prepare(config: ConfigOption = None) -> None:
    """Convert configured GGUF models (the embedded one included) into the cache once."""
    from rlme.service.model_store import resolve_model

    settings = _settings(config)
    for evaluator in settings.evaluators:
        path = resolve_model(evaluator.model, settings.cache_dir)
        typer.echo(f"{evaluator.name}: {path}")


@app.command()
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


@app.command()
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


@app.command()
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


keys = typer.Typer(help="API keys for multi-tenant use.")
app.add_typer(keys, name="keys")


@keys.command("new")
def keys_new(
    tenant: Annotated[str, typer.Option(help="The tenant (team) this key acts for.")],
    admin: Annotated[bool, typer.Option(help="May call /admin endpoints (and read /metrics).")] = False,
    metrics: Annotated[bool, typer.Option(help="May read /metrics: a key for Prometheus.")] = False,
    label: Annotated[str | None, typer.Option(help="A note, e.g. who holds the key.")] = None,
) -> None:
    """Make a key: give the key to the tenant, put the printed entry in `auth.keys`."""
    import yaml

    from rlme.service.auth import new_key

    key, digest = new_key()
    entry = {
        "tenant": tenant,
        "sha256": digest,
        "admin": admin,
        **({"metrics": True} if metrics else {}),
        **({"label": label} if label else {}),
    }
    typer.echo(f"# key for {tenant} (shown once; store it as their RLME_API_KEY): {key}")
    typer.echo("# add to auth.keys in the service config:")
    typer.echo(yaml.safe_dump([entry], sort_keys=False).rstrip())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
