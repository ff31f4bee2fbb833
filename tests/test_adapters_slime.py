"""slime adapter: awaited the way slime's rm_hub awaits a --custom-rm-path function."""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass

import pytest

from rlme.client.adapters import _common
from rlme.client.adapters.slime import batched_reward_func, reward_func
from rlme.client.testing import FakeRewardService
from rlme.client.wire import ChatMessage, Item


@dataclass
class Sample:
    """The fields of slime.utils.types.Sample that the adapter reads."""

    prompt: str | list[dict[str, str]]
    response: str
    label: str | None = None


ARGS = Namespace(rm_type=None, rm_url=None, group_rm=False)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RLME_RUBRIC", "RLME_QUESTIONS", "RLME_EVALUATORS", "RLME_SEND_REFERENCE"):
        monkeypatch.delenv(name, raising=False)


def by_length(item: Item) -> float:
    return float(len(item.response))


async def test_single_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_RUBRIC", "rlme_math")
    fake = FakeRewardService(reward=by_length)
    async with fake.async_client() as client:
        sample = Sample(prompt=[{"role": "user", "content": "2+2?"}], response="four", label="4")
        reward = await reward_func(ARGS, sample, client=client)
    assert reward == 4.0
    (request,) = fake.requests
    assert request.rubric == "rlme_math"
    assert request.items[0] == Item(
        prompt=[ChatMessage(role="user", content="2+2?")], response="four", reference="4"
    )


async def test_group_keeps_order_in_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_SEND_REFERENCE", "false")
    fake = FakeRewardService(reward=by_length)
    group = [Sample(prompt="Say hi", response="h" * n, label="hi") for n in (3, 1, 2, 5)]
    async with fake.async_client() as client:
        rewards = await batched_reward_func(ARGS, group, client=client)
    assert rewards == [3.0, 1.0, 2.0, 5.0]
    assert len(fake.requests) == 1
    assert all(item.reference is None for item in fake.requests[0].items)
    assert fake.requests[0].rubric == "correctness"


async def test_reward_func_also_takes_a_list_as_group_rm_passes() -> None:
    fake = FakeRewardService(reward=by_length)
    group = [Sample(prompt="p", response="x" * n, label=None) for n in (2, 4)]
    async with fake.async_client() as client:
        assert await reward_func(ARGS, group, client=client, rubric="polite") == [2.0, 4.0]
    assert fake.requests[0].rubric == "polite"
    assert len(fake.requests[0].items) == 2


async def test_shared_async_client_is_per_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_BASE_URL", "http://slime-rm:9")
    monkeypatch.setattr(_common, "_async_clients", type(_common._async_clients)())
    client = _common.shared_async_client()
    assert client.base_url == "http://slime-rm:9"
    assert _common.shared_async_client() is client
    await client.aclose()
    replacement = _common.shared_async_client()
    assert replacement is not client
    await replacement.aclose()
