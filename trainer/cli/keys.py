"""`rlme keys new`: make an API key for a tenant and print the entry for `auth.keys`."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="API keys for multi-tenant use.")


@app.command("new")
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
