"""`rlme serve` and `rlme prepare`: run the reward service; convert configured models once."""

from __future__ import annotations

from typing import Annotated

import typer

from rlme.trainer.cli.common import ConfigOption, config_error, load_settings


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
    settings = load_settings(config, model, **overrides)
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


def prepare(config: ConfigOption = None) -> None:
    """Convert configured GGUF models (the embedded one included) into the cache once."""
    from rlme.service.model_store import resolve_model

    settings = load_settings(config)
    for evaluator in settings.evaluators:
        path = resolve_model(evaluator.model, settings.cache_dir)
        typer.echo(f"{evaluator.name}: {path}")
