"""API keys → tenants. Keys are stored only as SHA-256 hashes and compared in constant time.

A key arrives as `Authorization: Bearer <key>`, `X-API-Key: <key>`, or — for RL
frameworks that can only be given a URL (OpenRLHF, slime) — an `api_key` query parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter

from rlme.service.errors import Forbidden, Unauthorized
from rlme.service.settings import ApiKeyConfig, Settings

KEY_PREFIX = "rlme-"


@dataclass(frozen=True)
class Principal:
    tenant: str
    admin: bool
    anonymous: bool = False


def new_key() -> tuple[str, str]:
    """A fresh key and the hash to put in the config."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, settings: Settings) -> None:
        keys = list(settings.auth.keys)
        if settings.auth.keys_file is not None:
            keys += load_keys_file(settings.auth.keys_file)
        self.keys = keys
        self.allow_anonymous = settings.auth.allow_anonymous
        self.anonymous_tenant = settings.auth.anonymous_tenant
        admin = settings.auth.anonymous_admin
        self.anonymous_admin = _is_loopback(settings.host) if admin is None else admin

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            if self.allow_anonymous:
                return Principal(self.anonymous_tenant, self.anonymous_admin, anonymous=True)
            raise Unauthorized("an API key is required: send `Authorization: Bearer <key>`")
        presented = hash_key(key)
        match: ApiKeyConfig | None = None
        for entry in self.keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(presented, entry.sha256):
                match = entry
        if match is None or match.revoked:
            raise Unauthorized("invalid or revoked API key")
        return Principal(match.tenant, match.admin)


def load_keys_file(path: Path) -> list[ApiKeyConfig]:
    if not path.is_file():
        raise ValueError(f"auth.keys_file {path} does not exist")
    entries = yaml.safe_load(path.read_text()) or []
    return TypeAdapter(list[ApiKeyConfig]).validate_python(entries)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_bearer = HTTPBearer(auto_error=False, description="An rlme API key.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> Principal:
    key = (bearer.credentials if bearer else None) or header_key or request.query_params.get("api_key")
    keyring: KeyRing = request.app.state.keyring
    who = keyring.authenticate(key)
    request.state.tenant = who.tenant
    return who


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.admin:
        raise Forbidden(f"tenant {who.tenant!r} may not use admin endpoints")
    return who


PrincipalDep = Annotated[Principal, Depends(principal)]
AdminDep = Annotated[Principal, Depends(admin)]
