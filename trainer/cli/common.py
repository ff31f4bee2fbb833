"""What the command families share: the --config option, one clear message for a configuration
that cannot work, loading the settings, and running one request through an in-process app."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

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


def load_settings(config: Path | None, model: str | None = None, **overrides: object):  # type: ignore[no-untyped-def]
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


def post_in_process(settings, path, request, response_model):  # type: ignore[no-untyped-def]
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
