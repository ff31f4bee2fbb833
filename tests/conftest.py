"""Shared fixtures: one service app with the real embedded evaluator, loaded once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from rlme.service.model_store import EMBEDDED, resolve_model
from rlme.service.settings import Settings

from support import loaded_app, service_settings, start_server


@pytest.fixture(scope="session")
def settings() -> Settings:
    return service_settings()


@pytest.fixture(scope="session")
def model_path(settings: Settings) -> Path:
    return resolve_model(EMBEDDED, settings.cache_dir)


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with loaded_app(settings) as app:
        yield app


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rlme") as client:
        yield client


@pytest.fixture(scope="module")
def one_thread_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `rlme serve` with one torch thread (beside a trainer or client on 2 shared cores)."""
    with start_server(tmp_path_factory.mktemp("server"), env={"OMP_NUM_THREADS": "1"}) as url:
        yield url
