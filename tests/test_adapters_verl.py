"""verl adapter: called with the arguments verl's reward managers pass."""

from __future__ import annotations

import json

import pytest

from rlme.client.adapters import _common
from rlme.client.adapters.verl import compute_score, compute_score_async, compute_score_batch
from rlme.client.testing import FakeRewardService
from rlme.client.wire import ChatMessage, Item


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RLME_RUBRIC", "RLME_QUESTIONS", "RLME_EVALUATORS", "RLME_SEND_REFERENCE", "RLME_RUN",
                 "RLME_STEP_SECONDS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def by_length(item: Item) -> float:
    return float(len(item.response))


def gsm8k_extra_info(question: str) -> dict:
    """What verl's examples/data_preprocess/gsm8k.py stores, plus what the manager adds."""
    return {"split": "train", "index": 0, "question": question, "num_turns": None,
            "rollout_reward_scores": {}}  # fmt: skip


def test_compute_score_naive_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_RUBRIC", "rlme_math")
    fake = FakeRewardService(reward=by_length)
    score = compute_score(
        data_source="openai/gsm8k",
        solution_str="2 + 2 = 4. #### 4",
        ground_truth="4",
        extra_info=gsm8k_extra_info("What is 2+2?"),
        client=fake.client(),
    )
    assert score == 17.0
    (request,) = fake.requests
    assert request.rubric == "rlme_math"
    assert request.items[0] == Item(prompt="What is 2+2?", response="2 + 2 = 4. #### 4", reference="4")


def test_prompt_sources_and_label_free_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_SEND_REFERENCE", "0")
    fake = FakeRewardService()
    client = fake.client()
    chat = [{"role": "user", "content": "Hi?"}]
    compute_score("src", "a", "gt", {"prompt": chat, "question": "ignored"}, client=client)
    compute_score("src", "b", "gt", None, client=client)
    compute_score("src", "c", 12, {"question": ""}, client=client)
    items = [request.items[0] for request in fake.requests]
    assert items[0].prompt == [ChatMessage(role="user", content="Hi?")]
    assert items[1].prompt == "" and items[2].prompt == ""
    assert all(item.reference is None for item in items)
    assert fake.requests[0].rubric == "correctness"  # nothing configured: the default


def test_questions_and_evaluators_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    questions = [{"id": "correct", "text": "Is the answer correct?", "weight": 1.0},
                 {"id": "length", "text": "Is it short?", "weight": 0.5}]  # fmt: skip
    monkeypatch.setenv("RLME_QUESTIONS", json.dumps(questions))
    monkeypatch.setenv("RLME_EVALUATORS", json.dumps([{"name": "judge", "weight": 2.0}]))
    fake = FakeRewardService()
    compute_score("src", "x", 5, {}, client=fake.client())
    (request,) = fake.requests
    assert request.rubric is None
    assert [(q.id, q.weight) for q in request.questions or []] == [("correct", 1.0), ("length", 0.5)]
    assert [(e.name, e.weight) for e in request.evaluators or []] == [("judge", 2.0)]
    assert request.items[0].reference == "5"


def test_reward_kwargs_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_QUESTIONS", json.dumps([{"id": "q", "text": "?"}]))
    fake = FakeRewardService()
    # +custom_reward_function.reward_kwargs.rubric=polite arrives as a keyword argument
    compute_score("src", "x", "gt", {}, rubric="polite", send_reference=False, client=fake.client())
    assert (fake.requests[0].rubric, fake.requests[0].questions) == ("polite", None)
    assert fake.requests[0].items[0].reference is None


def test_bad_env_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLME_QUESTIONS", "{not json")
    with pytest.raises(ValueError, match="RLME_QUESTIONS"):
        compute_score("src", "x", "gt", {}, client=FakeRewardService().client())
    monkeypatch.setenv("RLME_QUESTIONS", "[]")
    monkeypatch.setenv("RLME_RUBRIC", "polite")
    with pytest.raises(ValueError, match="RLME_RUBRIC"):
        compute_score("src", "x", "gt", {}, client=FakeRewardService().client())


def test_batch_signature_keeps_order_in_chunks() -> None:
    fake = FakeRewardService(reward=by_length)
    solutions = ["y" * n for n in range(1, 8)]
    scores = compute_score_batch(
        data_sources=["src"] * 7,
        solution_strs=solutions,
        ground_truths=[str(n) for n in range(7)],
        extra_infos=[gsm8k_extra_info(f"q{n}") for n in range(7)],
        reward_router_address=None,  # verl may pass extras; they are ignored
        client=fake.client(chunk_size=3),
    )
    assert scores == [float(n) for n in range(1, 8)]
    chunks = sorted(fake.requests, key=lambda r: str(r.items[0].prompt))  # they arrive in any order
    assert [len(r.items) for r in chunks] == [3, 3, 1]
    assert [item.prompt for r in chunks for item in r.items] == [f"q{n}" for n in range(7)]


async def test_async_signature_for_the_reward_loop() -> None:
    fake = FakeRewardService(reward=by_length)
    async with fake.async_client() as client:
        score = await compute_score_async("src", "abc", "gt", gsm8k_extra_info("q"), client=client)
    assert score == 3.0
    assert fake.requests[0].items[0].reference == "gt"


def test_shared_client_comes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "_sync_client", None)
    monkeypatch.setenv("RLME_BASE_URL", "http://verl-rm:8123")
    client = _common.shared_client()
    assert client.base_url == "http://verl-rm:8123"
    assert _common.shared_client() is client
    client.close()
    assert _common.shared_client() is not client  # a closed one is replaced
    _common.shared_client().close()


@pytest.mark.parametrize(
    ("env", "kwargs", "sent"),
    [
        ("0", {}, False),
        ("false", {}, False),
        ("", {}, True),  # set but empty: the default
        ("1", {"send_reference": "false"}, False),  # a string from a config file
        ("0", {"send_reference": True}, True),
    ],
)
def test_send_reference_flag(monkeypatch: pytest.MonkeyPatch, env: str, kwargs: dict, sent: bool) -> None:
    monkeypatch.setenv("RLME_SEND_REFERENCE", env)
    fake = FakeRewardService()
    compute_score("src", "x", "42", {}, client=fake.client(), **kwargs)
    assert (fake.requests[0].items[0].reference == "42") is sent


def test_a_run_id_tags_requests_with_verls_step_or_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRewardService()
    client = fake.client()
    compute_score("src", "a", "gt", {"question": "q"}, client=client)  # no run: untagged
    monkeypatch.setenv("RLME_RUN", "verl-run-1")
    compute_score("src", "a", "gt", {"question": "q", "global_steps": 7}, client=client)
    monkeypatch.setattr(_common.time, "time", lambda: 600.0)
    compute_score("src", "a", "gt", {"question": "q"}, client=client)  # verl 0.9.1 passes no step
    compute_score("src", "a", "gt", {"question": "q"}, client=client, run="other", step_seconds=30)
    tags = [(r.run, r.step) for r in fake.requests]
    assert tags == [(None, None), ("verl-run-1", 7), ("verl-run-1", 10), ("other", 20)]
