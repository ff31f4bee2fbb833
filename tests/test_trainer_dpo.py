"""Meta-Rewarding's iterative DPO: the loss and pair rules by hand, and a tiny real run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlme.trainer.dpo import actor_pair, dpo_loss, judge_pair_reason, load_config
from rlme.trainer.meta_judging import score_variance


def test_dpo_loss_against_numbers_worked_out_by_hand() -> None:
    policy_chosen, policy_rejected = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    loss, metrics = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5)
    # Pair 1: 0.5*(0.5) - 0.5*(-0.5) = 0.5 -> log(1 + e^-0.5) = 0.474077
    # Pair 2: 0.5*(-1) - 0.5*(1) = -1 -> log(1 + e^1) = 1.313262
    assert loss.item() == pytest.approx((0.474077 + 1.313262) / 2, abs=1e-5)
    assert metrics["dpo/margin"] == pytest.approx(-0.25)
    assert metrics["dpo/accuracy"] == pytest.approx(0.5)
    assert metrics["dpo/chosen_reward"] == pytest.approx((0.25 - 0.5) / 2)
    weighted, _ = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.5, torch.tensor([1.0, 0.0])
    )
    assert weighted.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-5)


def test_actor_pairs_with_length_control() -> None:
    scores, lengths = [4.0, 4.5, 2.0, 2.2], [10, 50, 30, 5]
    # rho 0.2: chosen among scores >= 4.0 the shortest (0), rejected among <= 2.5 the longest (2).
    assert actor_pair(scores, lengths, rho=0.2, tie_margin=0.05) == (0, 2)
    assert actor_pair(scores, lengths, rho=0.0, tie_margin=0.05) == (1, 2)  # plain best / worst
    assert actor_pair([3.0, 3.02, 3.01], [1, 2, 3], rho=0.2, tie_margin=0.05) is None  # a tie
    # With rho 0.5 both windows cover everything: shortest vs longest, unless that is one response.
    assert actor_pair([5.0, 1.0], [10, 10], rho=0.5, tie_margin=0.05) == (0, 1)


def test_judge_pairs_need_different_scores_and_a_bounded_length() -> None:
    assert judge_pair_reason(4, 4, 200, 1100) == "same score"
    assert judge_pair_reason(5, 2, 1200, 1100) == "chosen judgment too long"
    assert judge_pair_reason(5, 2, 800, 1100) is None


def test_the_judged_response_is_the_one_whose_stated_scores_vary_most() -> None:
    # The paper picks by variance, not range: one 0 among seven 5s has the larger range
    # (5 vs 4) but the smaller variance (175/64 = 2.73 vs 4) than [1, 5, 1, 5].
    assert score_variance([0.0] + [5.0] * 7) == pytest.approx(175 / 64)
    assert score_variance([1.0, 5.0, 1.0, 5.0]) == pytest.approx(4.0)
    assert score_variance([3.0]) == 0.0


class JudgingDouble:
    """Test double for RewardClient's judge calls: canned judgments per response text, and a
    meta-judge that records which response it was asked about (chosen 0, rejected 1)."""

    def __init__(self, stated: dict[str, list[int]]) -> None:
        self.stated = stated
        self.meta_asked: list[tuple[str, list[float]]] = []

    def judgments(self, items: list[dict[str, str]], **options: object) -> SimpleNamespace:
        def judgment(k: int) -> SimpleNamespace:
            probs = {str(label): 0.9 if label == k else 0.02 for label in range(6)}
            return SimpleNamespace(rationale=f"Worth {k}.", verdict_probs=probs, expected_score=float(k))

        results = []
        for item in items:
            scores = self.stated[item["response"]]
            results.append(SimpleNamespace(
                score=sum(scores) / len(scores), mask=False, status="ok",
                judgments=[judgment(k) for k in scores],
            ))  # fmt: skip
        return SimpleNamespace(results=results)

    def meta_judge(self, prompt: str, response: str, shown: list[str], **options: object) -> SimpleNamespace:
        self.meta_asked.append((response, list(options["judgment_scores"])))  # type: ignore[arg-type]
        return SimpleNamespace(chosen=0, rejected=1, scores=[1.0, -1.0], position_bias=0.5, score_bias=0.5)


def test_iteration_pairs_battle_the_response_whose_stated_scores_vary_most() -> None:
    from rlme.trainer.dpo import iteration_pairs

    stated = {"wide range": [0, 5, 5, 5, 5, 5, 5, 5], "most varied": [1, 5, 1, 5], "agreed": [3, 3, 3]}
    client = JudgingDouble(stated)
    cfg = load_config({"group_size": 3}, "x.yaml")
    template = SimpleNamespace(labels=[str(k) for k in range(6)], label_values=list(range(6)), cue="Score:")
    pairs, metrics = iteration_pairs(
        client, cfg, ["p"] * 3, list(stated), [True] * 3, template, lambda p, y: f"{p}|{y}", train_judge=True
    )
    assert [asked for asked, _ in client.meta_asked] == ["most varied"]  # variance, not range
    assert client.meta_asked[0][1] == [1, 5, 1, 5]  # the scores the judgments state
    judge = [p for p in pairs if p["kind"] == "judge"]
    assert len(judge) == 1 and judge[0]["prompt"] == "p|most varied"
    assert (judge[0]["chosen_score"], judge[0]["rejected_score"]) == (1, 5)
    assert metrics["pairs/skipped_no_spread"] == 0.0


def test_live_self_is_the_default_and_needs_a_frozen_referee() -> None:
    cfg = load_config({}, "x.yaml")
    assert cfg.live_self and cfg.referee == "frozen" and cfg.judge == "additive_5"
    assert load_config({"live_self": False}, "x.yaml").referee is None  # the service's default
    with pytest.raises(ValueError, match="cannot be the frozen referee"):
        load_config({"frozen_evaluator": "default"}, "x.yaml")


def test_config_refuses_unknown_fields_and_bad_rho() -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        load_config({"algorithm": "meta_rewarding", "rho": 0.2}, "x.yaml")
    with pytest.raises(ValueError, match="length_control"):
        load_config({"length_control": 0.7}, "x.yaml")


@pytest.mark.model
@pytest.mark.e2e
def test_one_tiny_iteration_writes_every_output_and_changes_the_weights(
    one_thread_server: str, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = {
        "algorithm": "meta_rewarding",
        "data": "lists",
        "rule": "numbered_list",
        "iterations": 1,
        "prompts_per_iteration": 2,
        "group_size": 2,
        "max_new_tokens": 8,
        "judgments": 2,
        "judge_max_tokens": 8,
        "eval_prompts": 2,
        "tie_margin": 0.0,
        "lr": 1e-4,
        "epochs": 1,
        "base_url": one_thread_server,
        "live_self": False,  # the frozen-judge option: this server has one evaluator
        "output_dir": str(run),
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "rlme.trainer.cli", "train", "--config", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in (
        "metrics.jsonl",
        "pairs.jsonl",
        "meta_rewarding.png",
        "config.json",
        "initial_responses.json",
    ):
        assert (run / name).exists(), name
    [metrics] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics["iteration"] == 1 and 0.0 <= metrics["eval/win_rate_vs_initial"] <= 1.0
    assert "eval/rule_accuracy" in metrics and "judge/score_mean" in metrics
    pairs = [json.loads(line) for line in (run / "pairs.jsonl").read_text().splitlines()]
    assert metrics["pairs/actor"] + metrics["pairs/judge"] == len(pairs) > 0
    assert all(p["reason"] and p["chosen"] != p["rejected"] for p in pairs)
    from safetensors.torch import load_file

    from rlme.service.model_store import EMBEDDED, resolve_model
    from rlme.service.settings import Settings

    before = load_file(str(resolve_model(EMBEDDED, Settings.load().cache_dir) / "model.safetensors"))
    after = load_file(str(run / "checkpoints" / "step_000001" / "model.safetensors"))
    changed = sum(not torch.equal(before[k], after[k]) for k in before if k in after)
    assert changed > 0


def test_a_service_without_the_frozen_referee_is_refused_at_start() -> None:
    from rlme.client.testing import FakeRewardService
    from rlme.trainer.meta_judging import judge_template

    refused = pytest.raises(ValueError, match=r"no evaluator \['frozen'\].*meta_rewarding_service.yaml")
    with FakeRewardService().client() as client, refused:  # one evaluator, `default`
        judge_template(client, load_config({}, "x.yaml"))
