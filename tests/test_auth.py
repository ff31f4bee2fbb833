"""API keys, tenants and the admin scope. The evaluator is never loaded here: auth is
decided before any scoring (a request that passes auth gets 503 `not_ready`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from rlme.service.app import create_app
from rlme.service.auth import hash_key

from support import service_settings

TEAM_KEY, ADMIN_KEY, REVOKED_KEY = "rlme-team-a-key", "rlme-admin-key", "rlme-old-key"
BODY = {"items": [{"prompt": "p", "response": "r"}], "rubric": "polite"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    keys = [
        {"tenant": "team-a", "sha256": hash_key(TEAM_KEY)},
        {"tenant": "platform", "sha256": hash_key(ADMIN_KEY), "admin": True},
        {"tenant": "team-b", "sha256": hash_key(REVOKED_KEY), "revoked": True},
    ]
    app = create_app(service_settings(auth={"keys": keys, "allow_anonymous": False}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({"Authorization": f"Bearer {REVOKED_KEY}"}, {}),
        ({"X-API-Key": "wrong"}, {}),
        ({}, {"api_key": "wrong"}),
    ],
    ids=["missing", "wrong", "revoked", "wrong header", "wrong query"],
)
async def test_no_valid_key_gets_401(client: httpx.AsyncClient, headers: dict, params: dict) -> None:
    answer = await client.post("/v1/rewards", json=BODY, headers=headers, params=params)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"Authorization": f"Bearer {TEAM_KEY}"}, {}),
        ({"X-API-Key": TEAM_KEY}, {}),
        ({}, {"api_key": TEAM_KEY}),  # for frameworks that only take a URL
    ],
    ids=["bearer", "header", "query"],
)
async def test_a_valid_key_passes(client: httpx.AsyncClient, headers: dict, params: dict) -> None:
    answer = await client.post("/v1/rewards", json=BODY, headers=headers, params=params)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "not_ready"


async def test_framework_routes_need_a_key_too(client: httpx.AsyncClient) -> None:
    body = {"prompt": "p", "response": "r"}
    assert (await client.post("/slime/reward", json=body)).status_code == 401
    answer = await client.post("/slime/reward", json=body, params={"api_key": TEAM_KEY})
    assert answer.status_code == 503


async def test_a_tenant_cannot_use_admin_endpoints(client: httpx.AsyncClient) -> None:
    path = "/admin/evaluators/default/reload"
    answer = await client.post(path, json={}, headers={"Authorization": f"Bearer {TEAM_KEY}"})
    assert answer.status_code == 403
    assert "team-a" in answer.json()["error"]["message"]
    assert (await client.post(path, json={})).status_code == 401


async def test_an_admin_reaches_admin_endpoints(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/admin/evaluators/nope/reload", json={}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert answer.status_code == 404 and "nope" in answer.json()["error"]["message"]


async def test_anonymous_on_localhost_is_the_default() -> None:
    app = create_app(service_settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/v1/rewards", json=BODY)).status_code == 503  # passed auth
        answer = await c.post("/admin/evaluators/nope/reload", json={})
        assert answer.status_code == 404  # anonymous is admin on loopback


async def test_anonymous_is_not_admin_off_localhost() -> None:
    app = create_app(service_settings(host="0.0.0.0"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/admin/evaluators/nope/reload", json={})).status_code == 403


async def test_a_changed_keys_file_is_picked_up_without_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    import yaml

    from rlme.service.auth import KeyRing

    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([{"tenant": "team-a", "sha256": hash_key(TEAM_KEY)}]))
    app = create_app(service_settings(auth={"keys_file": str(keys_file), "allow_anonymous": False}))
    keyring: KeyRing = app.state.keyring
    keyring.RELOAD_CHECK_S = 0.0  # check on every request here
    headers_a, headers_b = {"X-API-Key": TEAM_KEY}, {"X-API-Key": REVOKED_KEY}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/v1/rewards", json=BODY, headers=headers_a)).status_code == 503
        assert (await c.post("/v1/rewards", json=BODY, headers=headers_b)).status_code == 401
        # team-a revoked, team-b added: both take effect on the next request.
        entries = [
            {"tenant": "team-a", "sha256": hash_key(TEAM_KEY), "revoked": True},
            {"tenant": "team-b", "sha256": hash_key(REVOKED_KEY)},
        ]
        keys_file.write_text(yaml.safe_dump(entries))
        os.utime(keys_file, ns=(1, 10**18))  # a different mtime even within the clock's resolution
        assert (await c.post("/v1/rewards", json=BODY, headers=headers_a)).status_code == 401
        assert (await c.post("/v1/rewards", json=BODY, headers=headers_b)).status_code == 503
        # A broken file keeps the last good keys.
        keys_file.write_text("- {tenant: team-c, sha256: not-a-hash}\n")
        os.utime(keys_file, ns=(2, 2 * 10**18))
        assert (await c.post("/v1/rewards", json=BODY, headers=headers_b)).status_code == 503
