"""The framework adapters and the docs' examples against the real service.

One real `rlme serve` (the embedded evaluator, float32 on CPU) for the module. TRL's
`GRPOTrainer` runs two steps of a tiny random policy with `RLMERewardFunc` and must log
exactly the rewards the service gave; the verl and TRL-async functions must return what
`RewardClient.rewards` returns for the same items, called as those frameworks call them;
the Python examples in docs/ run as written (trl.md's with the hub-bound parts stood in for).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import math
import pickle
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from rlme.client import AsyncRewardClient, RewardClient
from rlme.client.adapters import _common
from rlme.client.adapters.trl import RLMERewardFunc, async_reward_func
from rlme.client.wire import Item

from support import start_server

pytestmark = [pytest.mark.model, pytest.mark.e2e]

# Reward values go through JSON, float32 tensors (TRL) and means: equal to float32 precision.
CLOSE = {"rel": 1e-5, "abs": 1e-5}

POLITE = {"id": "polite", "text": "Is the response polite?"}
GSM8K_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # One torch thread: on a shared 2-core machine under load, a 2-thread forward waits on a
    # descheduled thread; measured here, the module took 180 s with 2 threads, 40 s with 1.
    with start_server(tmp_path_factory.mktemp("server"), env={"OMP_NUM_THREADS": "1"}) as url:
        yield url


@pytest.fixture(scope="module")
def reward_client(server: str) -> Iterator[RewardClient]:
    with RewardClient(base_url=server) as client:
        yield client


class RecordingRewardFunc(RLMERewardFunc):
    """RLMERewardFunc that also keeps what TRL passed in and what the service answered."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> list[float | None]:
        rewards = super().__call__(prompts=prompts, completions=completions, **kwargs)
        self.calls.append(
            {"prompts": prompts, "completions": completions, "kwargs": kwargs, "rewards": rewards}
        )
        return rewards


def tiny_policy(model_path: Path) -> tuple[Any, Any]:
    """A randomly initialised 1-layer Llama with the SmolLM2 tokenizer: generates in milliseconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


class WireLog:
    """The bodies of /v1/rewards requests and answers, recorded by httpx event hooks."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []

    def http_client(self) -> httpx.Client:
        hooks = {"request": [self._request], "response": [self._response]}
        # httpx's own default timeout is 5 s; a busy test machine needs more.
        return httpx.Client(timeout=httpx.Timeout(300, connect=10), event_hooks=hooks)

    def _request(self, request: httpx.Request) -> None:
        if request.url.path == "/v1/rewards":
            self.requests.append(json.loads(request.content))

    def _response(self, response: httpx.Response) -> None:
        if response.request.url.path == "/v1/rewards":
            response.read()
            self.answers.append(response.json())


def test_trl_grpo_trainer_trains_on_rlme_rewards(server: str, model_path: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy, tokenizer = tiny_policy(model_path)
    questions = ["What is 2+2?", "What is 3+4?"]
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": q}] for q in questions], "reference": ["4", "7"]}
    )
    wire = WireLog()
    with wire.http_client() as http, RewardClient(base_url=server, http_client=http) as client:
        reward = RecordingRewardFunc(rubric="correctness", name="rlme_correct", client=client)
        args = GRPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            report_to="none",
            max_steps=2,
            logging_steps=1,
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=8,
            save_strategy="no",
            seed=0,
        )
        trainer = GRPOTrainer(
            model=policy, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        before = {name: p.detach().clone() for name, p in policy.named_parameters()}
        trainer.train()

    key = "rewards/rlme_correct/mean"  # TRL 1.16: f"rewards/{reward_func.__name__}/mean"
    step_logs = [log for log in trainer.state.log_history if key in log]
    assert [log["step"] for log in step_logs] == [1, 2]
    # One generation batch per step (1 prompt x 2 completions), one request each.
    assert len(reward.calls) == len(wire.requests) == len(wire.answers) == 2
    for log, call, sent, answer in zip(step_logs, reward.calls, wire.requests, wire.answers):
        # What went over the wire: the chat prompt, the assistant's text, the reference column.
        assert sent["rubric"] == "correctness"
        assert [(item["prompt"], item["response"], item.get("reference")) for item in sent["items"]] == [
            (prompt, completion[0]["content"], reference)
            for prompt, completion, reference in zip(
                call["prompts"], call["completions"], call["kwargs"]["reference"]
            )
        ]
        assert {item["prompt"][0]["content"] for item in sent["items"]} <= set(questions)
        # What TRL got and logged: the service's rewards, their mean, the adapter's p_yes.
        rewards = answer["rewards"]
        assert call["rewards"] == rewards
        assert all(math.isfinite(r) and r < 0 for r in rewards)
        assert log[key] == pytest.approx(sum(rewards) / len(rewards), **CLOSE)
        p_yes = [result["scores"][0]["p_yes"] for result in answer["results"]]
        assert log["rlme_correct/p_yes/correct"] == pytest.approx(sum(p_yes) / len(p_yes), **CLOSE)
    # GRPO updated the policy (rewards differ within a group, so advantages are non-zero).
    assert any(not p.detach().equal(before[name]) for name, p in policy.named_parameters())


def test_trl_async_reward_func(server: str, reward_client: RewardClient) -> None:
    prompts, completions = ["Say something nice."], ["You are wonderful; have a lovely day!"]
    logged: dict[str, float] = {}

    async def call() -> list[float | None]:
        async with AsyncRewardClient(base_url=server) as client:
            reward = async_reward_func(questions=[POLITE], name="rlme_polite", client=client)
            assert reward.__name__ == "rlme_polite"
            return await reward(
                prompts=prompts,
                completions=completions,
                completion_ids=[[1]],
                trainer_state=None,
                log_extra=lambda column, values: None,
                log_metric=logged.__setitem__,
            )

    rewards = asyncio.run(call())
    direct = reward_client.rewards([Item(prompt=prompts[0], response=completions[0])], questions=[POLITE])
    assert rewards == pytest.approx(direct.rewards, **CLOSE)
    assert logged == {"rlme_polite/p_yes/polite": pytest.approx(direct.results[0].scores[0].p_yes, **CLOSE)}


def gsm8k_row(question: str, solution: str, answer: str) -> dict[str, Any]:
    """A row as verl's examples/data_preprocess/gsm8k.py writes it, plus the decoded
    response. verl passes the row's fields to the reward function, never `prompt`."""
    instruction = 'Let\'s think step by step and output the final answer after "####".'
    return {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": question + " " + instruction}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": "train", "index": 0, "answer": solution, "question": question},
        "solution_str": solution,
    }


VERL_ROWS = [
    gsm8k_row(GSM8K_QUESTION, "In May she sold 48/2 = 24. 48+24 = 72. #### 72", "72"),
    gsm8k_row(GSM8K_QUESTION, "She sold 48 + 48 = 96 clips. #### 96", "72"),
]
# Not a shipped rubric's question: if $RLME_QUESTIONS were not read, the rewards would differ.
VERL_QUESTION = {"id": "final", "text": "Is the final answer after #### correct?"}


def verl_extra_info(row: dict[str, Any]) -> dict[str, Any]:
    """The row's extra_info with what verl's naive and batch managers add to it."""
    return {**row["extra_info"], "num_turns": None, "rollout_reward_scores": {}}


def call_with_kwargs(raw_fn: Callable[..., Any], extra: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    return raw_fn(*args, **{**kwargs, **extra})


async def call_with_kwargs_async(
    raw_fn: Callable[..., Any], extra: dict[str, Any], *args: Any, **kwargs: Any
) -> Any:
    return await raw_fn(*args, **{**kwargs, **extra})


def verl_reward_fn(name: str, reward_kwargs: dict[str, Any] | None = None) -> Callable[..., Any]:
    """What verl's get_custom_reward_fn (verl/trainer/ppo/reward.py) makes of
    `custom_reward_function.path=pkg://rlme.client.adapters.verl`, `.name` and `.reward_kwargs`:
    the module imported by name, and a partial in which reward_kwargs win."""
    raw_fn = getattr(importlib.import_module("rlme.client.adapters.verl"), name)
    wrapper = call_with_kwargs_async if inspect.iscoroutinefunction(raw_fn) else call_with_kwargs
    return partial(wrapper, raw_fn, dict(reward_kwargs or {}))


def verl_items(rows: list[dict[str, Any]], send_reference: bool = True) -> list[Item]:
    """What the adapter must send: the raw question, the response, the ground truth."""
    return [
        Item(
            prompt=row["extra_info"]["question"],
            response=row["solution_str"],
            reference=row["reward_model"]["ground_truth"] if send_reference else None,
        )
        for row in rows
    ]


@pytest.fixture
def verl_env(server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """verl's functions configured by environment, as verl's reward workers see it."""
    monkeypatch.setenv("RLME_BASE_URL", server)
    monkeypatch.setenv("RLME_QUESTIONS", json.dumps([VERL_QUESTION]))
    for name in ("RLME_API_KEY", "RLME_RUBRIC", "RLME_EVALUATORS", "RLME_SEND_REFERENCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_common, "_sync_client", None)  # the next one is built from this env
    yield
    if _common._sync_client is not None:
        _common._sync_client.close()


def test_verl_compute_score_and_batch(verl_env: None, reward_client: RewardClient) -> None:
    import numpy as np

    expected = reward_client.rewards(verl_items(VERL_ROWS), questions=[VERL_QUESTION]).rewards
    # The naive reward manager (verl/workers/reward_manager/naive.py): one call per sample.
    compute_score = verl_reward_fn("compute_score")
    single = [
        compute_score(
            data_source=row["data_source"],
            solution_str=row["solution_str"],
            ground_truth=row["reward_model"]["ground_truth"],
            extra_info=verl_extra_info(row),
        )
        for row in VERL_ROWS
    ]
    assert single == pytest.approx(expected, **CLOSE)
    assert all(math.isfinite(r) and r < 0 for r in single)
    # The batch reward manager (batch.py): numpy object arrays from DataProto.non_tensor_batch.
    batch = verl_reward_fn("compute_score_batch")(
        data_sources=np.array([row["data_source"] for row in VERL_ROWS], dtype=object),
        solution_strs=[row["solution_str"] for row in VERL_ROWS],
        ground_truths=[row["reward_model"]["ground_truth"] for row in VERL_ROWS],
        extra_infos=np.array([verl_extra_info(row) for row in VERL_ROWS], dtype=object),
    )
    assert batch == pytest.approx(expected, **CLOSE)


def test_verl_reward_kwargs_and_async(verl_env: None, reward_client: RewardClient) -> None:
    # custom_reward_function.reward_kwargs override the environment: label-free correctness.
    row = VERL_ROWS[1]
    (expected,) = reward_client.rewards(verl_items([row], send_reference=False), rubric="correctness").rewards
    reward_kwargs = {"rubric": "correctness", "send_reference": False}
    arguments = {
        "data_source": row["data_source"],
        "solution_str": row["solution_str"],
        "ground_truth": row["reward_model"]["ground_truth"],
        "extra_info": verl_extra_info(row),
    }
    assert verl_reward_fn("compute_score", reward_kwargs)(**arguments) == pytest.approx(expected, **CLOSE)

    # verl's reward loop (verl/experimental/reward_loop/reward_manager/naive.py) awaits the
    # function when inspect.iscoroutinefunction says so, through the same wrapping.
    compute_score_async = verl_reward_fn("compute_score_async", reward_kwargs)
    assert inspect.iscoroutinefunction(compute_score_async)

    async def score_async() -> float:
        try:
            return await compute_score_async(**arguments)
        finally:
            await _common.shared_async_client().aclose()

    assert asyncio.run(score_async()) == pytest.approx(expected, **CLOSE)


ROOT = Path(__file__).resolve().parent.parent


def python_blocks(page: str, section: str | None = None) -> list[str]:
    """The ```python blocks of a Markdown page, or of one of its `## section`s."""
    text = (ROOT / page).read_text()
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize(
    ("page", "section"),
    [
        ("docs/client.md", None),
        ("docs/judges.md", "From Python"),
        ("docs/integrations/verl.md", "From Python"),
        ("docs/integrations/slime.md", "From Python"),
    ],
)
def test_docs_python_examples_run_as_written(
    page: str,
    section: str | None,
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RLME_BASE_URL", server)
    monkeypatch.delenv("RLME_API_KEY", raising=False)
    blocks = python_blocks(page, section)
    assert blocks
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{page}, python block {number}", "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out
    assert "rlme failed" not in printed
    if page == "docs/client.md":  # the errors example: the server refused `grounded` without reference
        assert "\n400 " in printed or "\n422 " in printed


class TrainerStandIn:
    """Takes GRPOTrainer's place in trl.md's examples, which need the hub and a GPU."""

    made: list[TrainerStandIn] = []

    def __init__(self, *, model: Any, reward_funcs: Any, train_dataset: Any, args: Any = None) -> None:
        self.reward_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        self.train_dataset = train_dataset
        TrainerStandIn.made.append(self)

    def train(self) -> None:
        pass


async def my_other_async_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    return [0.0] * len(completions)


def test_trl_page_examples_build_working_reward_functions(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trl.md's examples run in order with the dataset and trainer stood in for; then each
    reward function they built scores a row, as GRPOTrainer would call it, on the live server."""
    import datasets
    import trl

    monkeypatch.setenv("RLME_BASE_URL", server)
    monkeypatch.delenv("RLME_API_KEY", raising=False)
    gsm8k = datasets.Dataset.from_dict({"question": ["What is 2+2?"], "answer": ["2 + 2 = 4\n#### 4"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: gsm8k)
    monkeypatch.setattr(trl, "GRPOTrainer", TrainerStandIn)
    monkeypatch.setattr(trl, "GRPOConfig", dict)
    monkeypatch.setattr(TrainerStandIn, "made", [])
    namespace: dict[str, Any] = {"__name__": "docs_example", "my_other_async_reward": my_other_async_reward}
    for number, block in enumerate(python_blocks("docs/integrations/trl.md"), 1):
        exec(compile(block, f"trl.md, python block {number}", "exec"), namespace)

    names = []
    for trainer in TrainerStandIn.made:
        row = trainer.train_dataset[0]
        columns = {key: [value] for key, value in row.items() if key != "prompt"}
        for func in trainer.reward_funcs:
            if func is my_other_async_reward:
                continue
            names.append(func.__name__)
            rewards = call_like_trl(
                func, prompts=[row["prompt"]], completions=["2 + 2 = 4. #### 4"], **columns
            )
            assert len(rewards) == 1
            if func.__name__ == "rlme_group_comparison":  # a group of one has nobody to compare with
                assert rewards == [None]
            elif func.__name__ == "rlme_judge":
                assert rewards[0] is None or 0 <= rewards[0] <= 1
            else:
                assert math.isfinite(rewards[0]) and rewards[0] < 0
    assert names == [
        "rlme_math",
        "rlme_correct",
        "rlme_length",
        "rlme_correct",
        "rlme_judge",
        "rlme_group_comparison",
    ]


def call_like_trl(func: Any, **kwargs: Any) -> list[float]:
    """Call a TRL reward function as GRPOTrainer does; close the clients it made."""

    def ignore(*args: Any) -> None:
        pass

    extra = {"completion_ids": [[1]], "trainer_state": None, "log_extra": ignore, "log_metric": ignore}
    if not inspect.iscoroutinefunction(func):
        try:
            return func(**kwargs, **extra)
        finally:
            func.close()

    async def call() -> list[float]:
        try:
            return await func(**kwargs, **extra)
        finally:
            await _common.shared_async_client().aclose()

    return asyncio.run(call())


def test_judge_reward_functions_as_trl_and_verl_call_them(server: str, reward_client: RewardClient) -> None:
    from rlme.client.adapters.trl import GroupComparisonRewardFunc, JudgeRewardFunc
    from rlme.client.adapters.verl import compute_score_judge

    prompts = ["What is 2+2?", "What is 2+2?", "Say hi.", "Say hi."]
    completions = ["4", "5", "Hi!", "Go away."]
    pointwise = JudgeRewardFunc(max_tokens=6, client=reward_client)
    scores = pointwise(prompts=prompts, completions=completions, **{"trainer_state": None})
    assert len(scores) == 4 and all(s is None or 0.0 <= s <= 1.0 for s in scores)
    assert pickle.loads(pickle.dumps(pointwise)).__name__ == "rlme_judge"
    # Each group of two: one comparison in both orders; the two win rates add up to 1.
    grouped = GroupComparisonRewardFunc(max_tokens=6, client=reward_client)(
        prompts=prompts, completions=completions
    )
    for a, b in ((0, 1), (2, 3)):
        assert grouped[a] is not None and grouped[b] is not None
        assert grouped[a] + grouped[b] == pytest.approx(1.0)
    verl = compute_score_judge(
        "openai/gsm8k", "4", "4", {"question": "What is 2+2?"}, client=reward_client, max_tokens=6
    )
    assert set(verl) == {"score", "masked", "status"}
    assert (verl["score"] is None) == verl["masked"]
