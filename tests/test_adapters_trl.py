"""TRL adapter: called the way GRPOTrainer._calculate_rewards calls reward functions."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest

from rlme.client.adapters.trl import RLMERewardFunc, async_reward_func
from rlme.client.testing import FakeRewardService
from rlme.client.wire import ChatMessage, Item


def by_length(item: Item) -> float:
    return -float(len(item.response))


def trl_kwargs(**columns: Any) -> dict[str, Any]:
    """What TRL adds besides prompts/completions: ids, state, loggers and dataset columns."""
    return {"completion_ids": [[1, 2]] * 3, "trainer_state": object(), "log_extra": print, **columns}


def test_standard_format_with_reference_column() -> None:
    fake = FakeRewardService(reward=by_length)
    func = RLMERewardFunc(rubric="correctness", client=fake.client(), name="rlme_correct")
    rewards = func(
        prompts=["What is 2+2?", "What is 3+3?", "Name a colour."],
        completions=["4", "six", "blue!"],
        **trl_kwargs(reference=["4", 6, None]),
    )
    assert rewards == [-1.0, -3.0, -5.0]
    assert func.__name__ == "rlme_correct"
    (request,) = fake.requests
    assert request.rubric == "correctness" and request.questions is None
    assert [item.reference for item in request.items] == ["4", "6", None]
    assert [item.prompt for item in request.items] == ["What is 2+2?", "What is 3+3?", "Name a colour."]


def test_conversational_format() -> None:
    fake = FakeRewardService(reward=by_length)
    func = RLMERewardFunc(questions=[{"id": "polite", "text": "Is it polite?"}], client=fake.client())
    prompts = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
    ]
    completions = [
        [{"role": "assistant", "content": "Hello there"}],
        [{"role": "assistant", "content": "A cat."}],
    ]
    assert func(prompts=prompts, completions=completions, completion_ids=[[1], [2]]) == [-11.0, -6.0]
    first, second = fake.requests[0].items
    assert first.prompt == [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hi"),
    ]
    assert first.response == "Hello there"
    assert second.prompt == [ChatMessage(role="user", content="What is this?")]
    assert fake.requests[0].questions and fake.requests[0].questions[0].id == "polite"
    assert fake.requests[0].rubric is None


def test_reference_columns_are_tried_in_order_and_can_be_disabled() -> None:
    fake = FakeRewardService()
    func = RLMERewardFunc(reference_column=("answer", "solution"), client=fake.client())
    func(prompts=["p"], completions=["c"], solution=["42"], reference=["ignored"])
    assert fake.requests[-1].items[0].reference == "42"
    func(prompts=["p"], completions=["c"], answer=["7"], solution=["42"])
    assert fake.requests[-1].items[0].reference == "7"
    off = RLMERewardFunc(reference_column=None, client=fake.client())
    off(prompts=["p"], completions=["c"], reference=["secret"])
    assert fake.requests[-1].items[0].reference is None
    assert fake.requests[-1].rubric == "correctness"  # the default rubric


def test_logs_mean_p_yes_per_question_when_trl_offers_log_metric() -> None:
    logged: dict[str, float] = {}
    fake = FakeRewardService(p_yes=0.75)
    func = RLMERewardFunc(
        questions=[{"id": "correct", "text": "Correct?"}, {"id": "logical", "text": "Logical?"}],
        client=fake.client(),
    )
    func(prompts=["p", "q"], completions=["a", "b"], log_metric=logged.__setitem__)
    assert logged == {"rlme/p_yes/correct": 0.75, "rlme/p_yes/logical": 0.75}


def test_large_batches_are_chunked_and_ordered() -> None:
    fake = FakeRewardService(reward=by_length)
    func = RLMERewardFunc(client=fake.client(chunk_size=4))
    completions = ["x" * n for n in range(10)]
    assert func(prompts=["p"] * 10, completions=completions) == [-float(n) for n in range(10)]
    assert sorted(len(r.items) for r in fake.requests) == [2, 4, 4]  # chunks arrive in any order


def test_picklable_for_async_grpo_child_processes() -> None:
    fake = FakeRewardService()
    func = RLMERewardFunc(rubric="polite", client=fake.client(base_url="http://rlme.test:1"))
    func(prompts=["p"], completions=["c"])
    copy = pickle.loads(pickle.dumps(func))
    assert copy.__name__ == "rlme"
    assert copy._client is None and copy._base_url == "http://rlme.test:1"
    assert copy._spec == func._spec


def test_both_rubric_and_questions_is_refused_early() -> None:
    with pytest.raises(ValueError, match="not both"):
        RLMERewardFunc(rubric="polite", questions=[{"id": "a", "text": "b"}])


async def test_async_variant_is_a_coroutine_function_trl_will_await() -> None:
    fake = FakeRewardService(reward=by_length)
    async with fake.async_client() as client:
        func = async_reward_func(rubric="grounded", name="rlme_grounded", client=client)
        assert inspect.iscoroutinefunction(func)  # how TRL tells sync from async
        assert func.__name__ == "rlme_grounded"
        rewards = await func(
            prompts=[[{"role": "user", "content": "Capital of France?"}]] * 2,
            completions=[
                [{"role": "assistant", "content": "Paris"}],
                [{"role": "assistant", "content": "Rome"}],
            ],
            **trl_kwargs(reference=["Paris is the capital.", "Paris is the capital."]),
        )
    assert rewards == [-5.0, -4.0]
    assert fake.requests[0].rubric == "grounded"
    assert fake.requests[0].items[1].reference == "Paris is the capital."


def test_a_run_id_sends_run_and_trls_global_step() -> None:
    from types import SimpleNamespace

    fake = FakeRewardService(reward=by_length)
    func = RLMERewardFunc(rubric="correctness", client=fake.client(), run="grpo-exp-7")
    kwargs = {**trl_kwargs(), "trainer_state": SimpleNamespace(global_step=42)}
    func(prompts=["a", "b", "c"], completions=["1", "2", "3"], **kwargs)
    assert (fake.requests[0].run, fake.requests[0].step) == ("grpo-exp-7", 42)
    plain = RLMERewardFunc(rubric="correctness", client=fake.client())
    plain(prompts=["a", "b", "c"], completions=["1", "2", "3"], **kwargs)
    assert (fake.requests[1].run, fake.requests[1].step) == (None, None)  # no run id: nothing sent
