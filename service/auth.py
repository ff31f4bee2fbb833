"""API keys → tenants. Keys are stored only as SHA-256 hashes and compared in constant time.

A key arrives as `Authorization: Bearer <key>`, `X-API-Key: <key>`, or — for RL
frameworks that can only be given a URL (OpenRLHF, slime) — an `api_key` query parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
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
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    tenant: str
    admin: bool
    anonymous: bool = False
    metrics: bool = False  # may read /metrics


def new_key() -> tuple[str, str]:
    """A fresh key and the hash to put in the config."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, plus `auth.keys_file`, which is re-read when it changes (checked
    at most once per `RELOAD_CHECK_S`): adding or revoking a key needs no restart, and a
    Kubernetes Secret update reaches every replica. A file that became unreadable or
    invalid keeps the last good keys and logs why."""

    RELOAD_CHECK_S = 1.0

    def __init__(self, settings: Settings) -> None:
        self._inline = list(settings.auth.keys)
        self._file = settings.auth.keys_file
        self._file_stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self.keys = list(self._inline)
        if self._file is not None:
            self._file_stamp = _stamp(self._file)
            self.keys += load_keys_file(self._file)  # at start-up a bad file is an error
        self.allow_anonymous = settings.auth.allow_anonymous
        self.anonymous_tenant = settings.auth.anonymous_tenant
        admin = settings.auth.anonymous_admin
        self.anonymous_admin = _is_loopback(settings.host) if admin is None else admin

    @property
    def keyless(self) -> bool:
        """No keys configured, inline or in a file: every caller is the anonymous tenant."""
        return not self._inline and self._file is None

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < self.RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            stamp = _stamp(self._file)
            if stamp == self._file_stamp:
                return
            self.keys = self._inline + load_keys_file(self._file)
            self._file_stamp = stamp
            log.info("auth.keys_file %s reloaded: %d keys", self._file, len(self.keys))
        except (OSError, ValueError) as exc:
            log.error("auth.keys_file %s could not be reloaded, keeping the last keys: %s", self._file, exc)

    def authenticate(self, key: str | None) -> Principal:
        self._reload_if_changed()
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
        return Principal(match.tenant, match.admin, metrics=match.metrics)


def load_keys_file(path: Path) -> list[ApiKeyConfig]:
    if not path.is_file():
        raise ValueError(f"auth.keys_file {path} does not exist")
    entries = yaml.safe_load(path.read_text()) or []
    return TypeAdapter(list[ApiKeyConfig]).validate_python(entries)


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


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


def metrics_reader(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> None:
    """GET /metrics: admins and metrics keys; anyone where the operator made it public, or
    while the service has no API keys at all (then there are no tenants to hide)."""
    keyring: KeyRing = request.app.state.keyring
    public = request.app.state.settings.auth.metrics_public
    if public or (public is None and keyring.keyless):
        return
    who = principal(request, bearer, header_key)
    if not (who.admin or who.metrics):
        raise Forbidden(
            f"tenant {who.tenant!r} may not read /metrics: use an admin key or a key with `metrics: true`"
        )


PrincipalDep = Annotated[Principal, Depends(principal)]
AdminDep = Annotated[Principal, Depends(admin)]
