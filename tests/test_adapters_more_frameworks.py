"""The NeMo Gym, AReaL, ROLL, slime-filter and verl reward-loop adapters against one real
`rlme serve`, each called the way its framework calls it (the call sites read in each
framework's source at the version its docs page names), and each failure handed to the
framework's own way of dropping a sample, never a 0."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from argparse import Namespace
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest

from rlme.client import AsyncRewardClient, RewardClient
from rlme.client.adapters import _common, areal, nemo_gym, roll, slime, verl
from rlme.client.adapters._common import Outcome, Scoring

from support import free_port, start_server

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTION = [{"id": "correct", "text": "Is the answer correct?"}]
CLOSE = {"rel": 1e-5, "abs": 1e-5}  # float32, batched with other items or not


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("server"), env={"OMP_NUM_THREADS": "1"}) as url:
        yield url


@pytest.fixture(autouse=True)
async def env(server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    for name in ("RLME_RUBRIC", "RLME_EVALUATORS", "RLME_SEND_REFERENCE", "RLME_RUN", "RLME_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RLME_BASE_URL", server)
    monkeypatch.setenv("RLME_QUESTIONS", '[{"id": "correct", "text": "Is the answer correct?"}]')
    yield
    # The adapters keep one client per process or event loop; close them between tests.
    for client in list(_common._async_clients.values()):
        await client.aclose()
    for client in areal._clients.values():
        client.close()
    areal._clients.clear()


def expected(server: str, prompt: Any, response: str, reference: str | None) -> float:
    with RewardClient(base_url=server) as client:
        item = {"prompt": prompt, "response": response, "reference": reference}
        return client.rewards([item], questions=QUESTION).rewards[0]


DOWN = f"http://127.0.0.1:{free_port()}"  # nothing listens there


# ------------------------------------------------------------------------------ NeMo Gym


def gym_verify_body(answer: str) -> dict[str, Any]:
    """What Gym's simple_agent POSTs to /verify (nemo_gym/base_resources_server.py at Gym
    0.7.0: the row's fields, responses_create_params, response as an OpenAI Responses object)."""
    return {
        "responses_create_params": {"input": [{"role": "user", "content": "What is 2+2?"}]},
        "response": {
            "id": "resp_1", "object": "response", "created_at": 0, "model": "policy", "status": "completed",
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Add."}]},
                {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": answer, "annotations": []}]},
            ],
        },
        "expected_answer": "4",
    }  # fmt: skip


async def test_nemo_gym_verify_returns_rlmes_reward_and_masks_a_failure(server: str) -> None:
    app = nemo_gym.create_app()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),  # closes the server's own client at the end
        httpx.AsyncClient(transport=transport, base_url="http://gym", timeout=120) as gym,
    ):
        assert (await gym.post("/seed_session", json={})).json() == {}
        answers = await asyncio.gather(*(gym.post("/verify", json=gym_verify_body(a)) for a in ("4", "5")))
    bodies = [a.json() for a in answers]
    for body, answer in zip(bodies, ("4", "5")):
        assert body["reward"] == pytest.approx(
            expected(server, [{"role": "user", "content": "What is 2+2?"}], answer, "4"), **CLOSE
        )
        assert body["expected_answer"] == "4" and "_ng_failure_class" not in body  # the body comes back
    assert bodies[0]["reward"] > bodies[1]["reward"]

    async with AsyncRewardClient(base_url=DOWN, max_retries=0) as down:
        failing = nemo_gym.create_app(client=down, scoring=Scoring(questions=None, rubric="correctness"))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=failing), base_url="http://gym"
        ) as gym:
            body = (await gym.post("/verify", json=gym_verify_body("4"))).json()
            metrics = (
                await gym.post("/aggregate_metrics", json={"verify_responses": [body, bodies[0]]})
            ).json()
    assert body["instance_config"]["mask_sample"] is True  # NeMo RL zeroes this sample's loss
    assert body["_ng_failure_class"] == "judge_failed" and "rlme" in body["_ng_failure_judge_error"]
    assert metrics["agent_metrics"]["rlme/failed_fraction"] == 0.5
    assert metrics["agent_metrics"]["mean/reward"] == pytest.approx(bodies[0]["reward"])


async def test_nemo_gym_hostile_bodies_get_a_mask_or_a_422_never_a_500(server: str) -> None:
    app = nemo_gym.create_app()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gym", timeout=120) as gym,
    ):
        surrogate = json.dumps(gym_verify_body("4")).replace('"text": "4"', '"text": "4\\ud800"')
        answer = await gym.post("/verify", content=surrogate, headers={"content-type": "application/json"})
        assert answer.status_code == 422 and "surrogate" in answer.text  # named, as the service does
        huge = await gym.post("/verify", json=gym_verify_body("4" * 100_000))  # the service answers 413
        assert huge.status_code == 200 and huge.json()["_ng_failure_class"] == "judge_failed"
        big = await gym.post("/verify", json={**gym_verify_body("4"), "task_id": 2**70})
        assert big.json()["task_id"] == 2**70 and "_ng_failure_class" not in big.json()  # echoed, scored
        for broken in ({"response": "text"}, {"response": {"output": "text"}},
                       {**gym_verify_body("4"), "responses_create_params": {"input": 5}}):  # fmt: skip
            refused = await gym.post("/verify", json=broken)
            assert refused.status_code == 422, refused.text
        odd = {"verify_responses": [None, {"reward": "x"}, {"reward": 0.5}]}
        assert (await gym.post("/aggregate_metrics", json=odd)).json()["agent_metrics"]["mean/reward"] == 0.5


def test_nemo_gym_reads_the_last_assistant_message() -> None:
    def said(text: str) -> dict[str, Any]:
        return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}

    call = {"type": "function_call", "name": "calc"}
    response = {"output": [said("Let me check."), call, said("It is 4.")]}
    assert nemo_gym.answer_text(response) == "It is 4."
    asked = nemo_gym.prompt_of({"input": "2+2?", "instructions": "Be brief."})
    assert asked == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


# ------------------------------------------------------------------------------ AReaL


def test_areal_reward_fn_in_a_process_pool_as_its_wrapper_calls_it(server: str) -> None:
    # AsyncRewardWrapper (areal/api/reward_api.py, AReaL 1.0.4) runs
    # partial(reward_fn, prompt, completion, prompt_ids, completion_ids, **row) in a process pool.
    call = partial(areal.reward_fn, "What is 2+2?", "4", [1, 2], [3], answer="4", query_id="q1")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        reward = pool.submit(call).result(timeout=120)
    assert reward == pytest.approx(expected(server, "What is 2+2?", "4", "4"), **CLOSE)


def test_areal_raises_on_a_failure_so_its_workflow_rejects_the_rollout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RLME_BASE_URL", DOWN)
    monkeypatch.setenv("RLME_TIMEOUT_S", "3")
    with pytest.raises(areal.RewardFailed):
        areal.reward_fn("What is 2+2?", "4", None, None, answer="4")


async def test_areal_async_reward_fn(server: str) -> None:
    reward = await areal.async_reward_fn("What is 2+2?", "5", None, None, solution="4")
    assert reward == pytest.approx(expected(server, "What is 2+2?", "5", "4"), **CLOSE)


# ------------------------------------------------------------------------------ ROLL


@dataclass
class DataProto:
    """The parts of ROLL's DataProto (roll/distributed/scheduler/protocol.py at ROLL 8eb27cc)
    the reward worker reads and builds: `batch` tensors, `non_tensor_batch`, `meta_info`."""

    batch: dict[str, Any]
    non_tensor_batch: dict[str, Any] = field(default_factory=dict)
    meta_info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, tensors: dict[str, Any]) -> DataProto:
        return cls(batch=tensors)


def test_roll_worker_scores_a_batch_as_its_llm_judge_worker_is_called(server: str, model_path: Any) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = Namespace(actor_train=Namespace(model_args=Namespace(model_name_or_path=str(model_path))))
    worker = roll.RLMERewardWorker(Namespace(model_args=None))
    worker.initialize(config)
    prompts, responses = ["What is 2+2?", "What is 3+3?"], ["4", "7"]
    pad = tokenizer.pad_token_id or 0

    def ids(texts: list[str]) -> Any:
        import torch

        rows = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        width = max(map(len, rows))
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

    data = DataProto(batch={"prompts": ids(prompts), "responses": ids(responses)},
                     non_tensor_batch={"id": ["a", "b"], "ground_truth": ["4", "6"]})  # fmt: skip
    out = worker.compute_rewards(data)
    want = [expected(server, p, r, g) for p, r, g in zip(prompts, responses, ["4", "6"])]
    assert out.batch["response_level_rewards"].tolist() == pytest.approx(want, abs=0.01)  # float16, as ROLL's
    assert out.batch["token_level_rewards"].shape == data.batch["responses"].shape
    assert out.meta_info["metrics"]["rlme/failed_fraction"] == 0.0
    assert worker.client is not None
    worker.client.close()


def test_roll_fills_a_failed_sample_with_the_batch_mean_and_raises_when_all_fail() -> None:
    found = [Outcome(-1.0), Outcome(None, "x"), Outcome(-3.0), Outcome(-10.0), Outcome(None, "y")]
    prompts = ["a", "a", "a", "b", "c"]  # its own prompt's mean; a prompt with no score: the batch's
    assert roll.fill_failed(found, prompts) == [-1.0, -2.0, -3.0, -10.0, pytest.approx(-14 / 3)]
    with pytest.raises(Exception, match="none of the 2"):
        roll.fill_failed([Outcome(None, "x"), Outcome(None, "y")], ["a", "a"])


# ------------------------------------------------------------------------------ slime


@dataclass
class Sample:
    """slime.utils.types.Sample's fields the filter path uses (slime v0.3.1)."""

    prompt: str
    response: str
    label: str | None = None
    reward: float | None = None
    remove_sample: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


async def test_slime_failed_samples_are_removed_with_a_neutral_reward(server: str) -> None:
    args = Namespace(rollout_sample_filter_path=slime.FILTER_PATH)
    group = [Sample("What is 2+2?", "4", "4"), Sample("What is 2+2?", "5", "4")]
    for sample in group:  # as slime's async_rm awaits a --custom-rm-path function
        sample.reward = await slime.masked_reward_func(args, sample)
    assert group[0].reward == pytest.approx(expected(server, "What is 2+2?", "4", "4"), **CLOSE)
    async with AsyncRewardClient(base_url=DOWN, max_retries=0) as down:
        broken = Sample("What is 2+2?", "22", "4")
        broken.reward = await slime.masked_reward_func(args, broken, client=down)
        with pytest.raises(slime.RewardFailed, match="rollout-sample-filter-path"):  # no filter: loud
            await slime.masked_reward_func(Namespace(), Sample("2+2?", "4"), client=down)
    groups = [[*group, broken]]
    slime.drop_failed(args, groups)  # slime calls filter_func(args, data) with the groups
    assert broken.remove_sample and not group[0].remove_sample and not group[1].remove_sample
    assert broken.reward == pytest.approx((group[0].reward + group[1].reward) / 2)
    assert "rlme" in broken.metadata[slime.FAILURE_KEY]


# ------------------------------------------------------------------------------ verl


async def test_verl_reward_loop_signature_and_a_failure_that_raises(server: str) -> None:
    # verl 0.9.1's reward loop awaits compute_score(data_source=..., solution_str=..., ground_truth=...,
    # extra_info=..., reward_router_address=..., reward_model_tokenizer=...) with keywords only.
    got = await verl.compute_score_reward_loop(
        data_source="gsm8k", solution_str="4", ground_truth="4", extra_info={"prompt": "What is 2+2?"},
        reward_router_address="127.0.0.1:9", reward_model_tokenizer=None,
    )  # fmt: skip
    assert set(got) == {"score", "rlme_low_label_mass"}  # the same keys for every sample, as verl needs
    assert got["score"] == pytest.approx(expected(server, "What is 2+2?", "4", "4"), **CLOSE)
    async with AsyncRewardClient(base_url=DOWN, max_retries=0) as down:
        with pytest.raises(verl.RewardFailed):
            await verl.compute_score_reward_loop("gsm8k", "4", "4", {"prompt": "2+2?"}, client=down)
