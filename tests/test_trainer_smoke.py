"""The trainer for real, tiny: a subprocess run against a real service, and one in-process step.

Settings are the smallest that still exercise everything (G=2, 2 prompts, 8 new tokens):
the machine is 2 shared CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from support import start_server

pytestmark = pytest.mark.model

TINY = {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 8, "mu": 2, "micro_batch_size": 4}
# One thread per process: on 2 shared cores, two OpenMP threads each in the trainer, the server
# and other jobs oversubscribe the cores, and spin-waits made one tiny step take 80 s, not 9 s.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("server"), env=ONE_THREAD) as url:
        yield url


def run_trainer(config: dict[str, object], path: Path) -> None:
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "rlme.trainer.grpo", "--config", str(path)]
    env = {**os.environ, **ONE_THREAD}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.e2e
def test_two_steps_in_a_subprocess_then_resume(server: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = {
        **TINY,
        "data": "arith",  # has references: rlvr/accuracy is logged, anchoring has something to show
        "reward": "mixture",
        "rubric": "correctness",
        "anchor_fraction": 0.5,
        "steps": 2,
        "checkpoint_every": 1,
        "live_self_every": 2,  # at step 2 the service's evaluator reloads the policy's weights
        "base_url": server,
        "output_dir": str(run),
    }
    run_trainer(config, tmp_path / "config.json")
    assert (run / "live_self" / "config.json").is_file()
    reloaded = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'rlme_evaluator_reloads_total{evaluator="default"} 1.0' in reloaded

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        for name in ("reward/mean", "reward/std", "p_yes/correct/mean", "rlvr/accuracy", "loss/cispo"):
            assert math.isfinite(line[name]), (name, line)
        assert 0 < line["p_yes/correct/mean"] < 1
        assert line["response/length_mean"] <= 8
    assert (run / "rewards.png").stat().st_size > 0
    assert list((run / "tb").iterdir())

    from transformers import AutoModelForCausalLM

    checkpoint = run / "checkpoints" / "step_000002"
    assert (checkpoint / "model.safetensors").is_file()
    assert AutoModelForCausalLM.from_pretrained(checkpoint).config.model_type == "llama"
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and state["optimizer"]["state"]

    # Resuming from step 1 redoes step 2 exactly: same prompts, same sampled responses.
    first = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    resume = {"resume": str(run / "checkpoints" / "step_000001"), "save_final": False, "checkpoint_every": 0}
    run_trainer({**config, **resume}, tmp_path / "resume.json")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    again = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert again[-1]["step"] == 2 and again[-1]["responses"] == first[1]["responses"]


def test_parameters_change_after_one_optimisation_step(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rlme.client.testing import FakeRewardService
    from rlme.service.model_store import EMBEDDED, resolve_model
    from rlme.service.settings import Settings
    from rlme.trainer.grpo import TrainConfig, train

    # A reward that differs between different responses, so advantages are not all zero.
    fake = FakeRewardService(reward=lambda item: float(sum(map(ord, item.response)) % 7))
    questions = [{"id": "polite", "text": "Is the response polite?"}]
    cfg = TrainConfig(
        **{**TINY, "group_size": 3, "prompts_per_step": 1, "mu": 1},
        data="polite", questions=questions, steps=1, kl_coef=0.1, lr=1e-5,
        save_final=False, output_dir=str(tmp_path),
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see ONE_THREAD
    try:
        with fake.client() as client:
            model = train(cfg, client=client)
    finally:
        torch.set_num_threads(threads)

    metrics = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert metrics["reward/std"] > 0, "all responses got the same reward: nothing to learn from"
    assert metrics["loss/kl"] == pytest.approx(0.0, abs=1e-6)  # π_θ = π_ref during the only pass
    initial = load_file(resolve_model(EMBEDDED, Settings.load().cache_dir) / "model.safetensors")
    trained = model.state_dict()
    changed = [name for name, tensor in initial.items() if not torch.equal(tensor, trained[name])]
    assert len(changed) > len(initial) // 2, f"only {len(changed)} of {len(initial)} tensors changed"
