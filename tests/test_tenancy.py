"""Per-tenant quotas: unit tests of the token bucket, and 429s over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from rlme.service.errors import InvalidRequest, Overloaded
from rlme.service.rate_store import TokenBucket
from rlme.service.tenancy import Tenants

from support import service_settings

BODY = {"items": [{"prompt": "p", "response": "r"}], "rubric": "polite"}  # 2 evaluations


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=4.0)
    bucket.updated = 0.0
    assert bucket.take(4, now=0.0) == 0.0  # a full bucket allows a burst of 4
    assert bucket.take(1, now=0.0) == pytest.approx(0.5)  # 1 more needs 0.5 s at 2/s
    assert bucket.take(1, now=0.5) == 0.0
    assert bucket.take(3, now=1.0) == pytest.approx(1.0)  # has 1, needs 2 more: 1 s


async def test_queued_limit_and_oversized_requests() -> None:
    tenants = Tenants(service_settings(tenants={"a": {"max_queued_evaluations": 4}}))
    await tenants.admit("a", 4)  # reserves 4
    with pytest.raises(Overloaded):
        await tenants.admit("a", 1)
    tenants.dequeued("a", 4)
    await tenants.admit("a", 1)
    tenants.dequeued("a", 1)
    with pytest.raises(InvalidRequest, match="at most 4"):
        await tenants.admit("a", 5)  # could never fit: not retryable
    await tenants.admit("someone-else", 1000)  # default tenant: unlimited
    assert tenants.queued["a"] == 0  # a refused request reserves nothing


@pytest.fixture
def rate_limited(app: FastAPI) -> Iterator[FastAPI]:
    scorer = app.state.scorer
    saved = scorer.tenants
    limits = {"anonymous": {"max_evaluations_per_s": 0.05, "burst_evaluations": 2}}
    scorer.tenants = Tenants(service_settings(tenants=limits))
    yield app
    scorer.tenants = saved


async def test_over_the_rate_gets_429_with_retry_after(
    rate_limited: FastAPI, client: httpx.AsyncClient
) -> None:
    assert (await client.post("/v1/rewards", json=BODY)).status_code == 200  # the burst
    answer = await client.post("/v1/rewards", json=BODY)
    assert answer.status_code == 429
    assert 20 <= int(answer.headers["retry-after"]) <= 40  # 2 evaluations at 0.05/s, less the refill
    assert "anonymous" in answer.json()["error"]["message"]
    metrics = (await client.get("/metrics")).text
    assert 'rlme_tenant_rejected_requests_total{code="429",tenant="anonymous"}' in metrics
    assert 'rlme_tenant_evaluations_total{tenant="anonymous"}' in metrics
