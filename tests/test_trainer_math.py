"""The trainer's pure functions against numbers worked out by hand (no model, no server)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlme.client.testing import FakeRewardService
from rlme.trainer.common import load_rows, step_rows
from rlme.trainer.grpo import TrainConfig, cispo_loss, group_advantages, kl_k3, load_config
from rlme.trainer.rewards import compute_rewards, resolve_rule

# ---------------------------------------------------------------- advantages


def test_group_advantages_centre_and_scale_each_group() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])  # (P=2, G=3)
    # Group 0: mean 2 -> [-1, 0, 1]; population std sqrt((1 + 0 + 1) / 3) = 0.816497 -> ±1.224745.
    # Group 1: all equal -> centred 0, std 0 -> 0 / (0 + 1e-6) = 0: no signal, no NaN.
    expected = torch.tensor([[-1.224745, 0.0, 1.224745], [0.0, 0.0, 0.0]])
    assert torch.allclose(group_advantages(rewards, scale_by_std=True), expected, atol=1e-5)
    unscaled = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert torch.equal(group_advantages(rewards, scale_by_std=False), unscaled)


def test_group_advantages_two_samples() -> None:
    # [0, 1]: mean 0.5 -> [-0.5, 0.5]; std 0.5 -> [-1, 1] (minus the 1e-6 in the denominator).
    advantages = group_advantages(torch.tensor([[0.0, 1.0]]), scale_by_std=True)
    assert torch.allclose(advantages, torch.tensor([[-1.0, 1.0]]), atol=1e-5)


# ---------------------------------------------------------------- CISPO


def _hand_example() -> tuple[torch.Tensor, ...]:
    """B=2 sequences, T=3 tokens; the last token of row 1 is padding."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -7.0]], requires_grad=True)  # (B, T)
    ratios = torch.tensor([[1.0, 2.0, 0.5], [1.5, 0.9, 3.0]])  # chosen ρ_t = π_θ / π_old
    old_logp = (logp.detach() - ratios.log()).requires_grad_(True)  # (B, T)
    advantages = torch.tensor([2.0, -1.0])  # (B,)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # (B, T), N = 5 tokens
    return logp, old_logp, advantages, mask


def test_cispo_loss_matches_hand_computation() -> None:
    logp, old_logp, advantages, mask = _hand_example()
    loss, metrics = cispo_loss(logp, old_logp, advantages, mask, eps_low=0.2, eps_high=0.28)
    # clip(ρ, 0.8, 1.28): row 0 [1.0, 1.28, 0.8], row 1 [1.28, 0.9, (pad)].
    # Σ w·A·logp = 2·(1.0·-1 + 1.28·-2 + 0.8·-0.5) + (-1)·(1.28·-3 + 0.9·-1)
    #            = 2·(-3.96) + 4.74 = -3.18;  loss = -(-3.18) / 5 = 0.636.
    assert loss.item() == pytest.approx(0.636, abs=1e-6)
    # Clipped: ρ = 2.0 and 0.5 in row 0, 1.5 in row 1 (the padded 3.0 does not count): 3 of 5.
    assert metrics["loss/cispo_clip_frac"] == pytest.approx(0.6)
    # Mean ρ over real tokens: (1 + 2 + 0.5 + 1.5 + 0.9) / 5 = 1.18.
    assert metrics["loss/ratio_mean"] == pytest.approx(1.18, abs=1e-6)


def test_cispo_gradient_is_minus_clipped_weight_times_advantage_over_n() -> None:
    logp, old_logp, advantages, mask = _hand_example()
    loss, _ = cispo_loss(logp, old_logp, advantages, mask, eps_low=0.2, eps_high=0.28)
    loss.backward()
    # d loss / d logp_t = -sg(clip(ρ_t)) · A / N, with no term from ρ's own dependence on logp
    # (that would add -ρ·A·logp/N). Row 0: -[1.0, 1.28, 0.8]·2/5; row 1: -[1.28, 0.9, 0]·(-1)/5.
    expected = torch.tensor([[-0.4, -0.512, -0.32], [0.256, 0.18, 0.0]])
    assert torch.allclose(logp.grad, expected, atol=1e-6)
    # Clipped tokens keep their gradient (unlike PPO/GRPO clipping) and none flows into π_old.
    assert old_logp.grad is None


def test_cispo_on_policy_is_the_plain_policy_gradient() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, metrics = cispo_loss(logp, logp.detach(), torch.tensor([3.0]), torch.ones(1, 2), 0.2, 0.28)
    # ρ = 1 everywhere: loss = -3·(-1 - 2)/2 = 4.5; gradient -A/N = -1.5 per token.
    assert loss.item() == pytest.approx(4.5)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.5, -1.5]]))
    assert metrics["loss/cispo_clip_frac"] == 0.0


def test_cispo_num_tokens_normalises_over_the_whole_batch() -> None:
    logp, old_logp, advantages, mask = _hand_example()
    loss, _ = cispo_loss(logp, old_logp, advantages, mask, 0.2, 0.28, num_tokens=10)
    assert loss.item() == pytest.approx(0.636 / 2, abs=1e-6)  # -(-3.18) / 10
    # Two micro-batches with the batch's N add up to the full batch's loss.
    rows = [slice(0, 1), slice(1, 2)]
    parts = [
        cispo_loss(logp[r], old_logp[r], advantages[r], mask[r], 0.2, 0.28, num_tokens=5)[0] for r in rows
    ]
    assert sum(p.item() for p in parts) == pytest.approx(0.636, abs=1e-6)


def test_kl_k3() -> None:
    # π_θ = 0.5, π_ref = 0.25: d = log 0.25 - log 0.5 = -log 2; k3 = e^d - d - 1 = 0.5 + 0.693147 - 1.
    logp = torch.tensor([[math.log(0.5), math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])  # the second token agrees: k3 = 0
    assert kl_k3(logp, ref, torch.ones(1, 2), num_tokens=2).item() == pytest.approx(0.193147 / 2, abs=1e-6)


# ---------------------------------------------------------------- rewards through a fake service


def test_compute_rewards_mixture_and_anchoring() -> None:
    fake = FakeRewardService(reward=lambda item: -1.0 if item.reference else -2.0, p_yes=0.25)
    questions = [{"id": "correct", "text": "Is the answer correct?", "weight": 2.0}]
    cfg = TrainConfig(reward="mixture", rlme_weight=0.5, rlvr_weight=3.0, questions=questions)
    from rlme.client import MetaQuestion

    with fake.client() as client:
        rewards, metrics = compute_rewards(
            client, cfg, [MetaQuestion.model_validate(q) for q in questions],
            prompts=["What is 2+2?"] * 2, texts=["4", "5"], references=["4", "4"], anchored=[True, False],
            rule="reference",
        )  # fmt: skip
    # Item 0: anchored (sees "4": -1), correct: 0.5·-1 + 3·1 = 2.5. Item 1: 0.5·-2 + 3·0 = -1.
    assert rewards.tolist() == [2.5, -1.0]
    sent = fake.requests[0].items
    assert [item.reference for item in sent] == ["4", None]  # only anchored items show the truth
    assert metrics["rlvr/accuracy"] == 0.5
    assert metrics["p_yes/correct/mean"] == 0.25
    assert metrics["reward/correct/mean"] == pytest.approx(2.0 * math.log(0.25))


def test_a_score_with_low_label_mass_is_masked_like_r_aligns_failed_checks() -> None:
    fake = FakeRewardService(p_yes=lambda item: None if item.response == "???" else 0.5)
    questions = [{"id": "correct", "text": "Is the answer correct?"}]
    from rlme.client import MetaQuestion

    parsed = [MetaQuestion.model_validate(q) for q in questions]
    texts = ["4", "???", "5", "4"]
    for masked in (True, False):
        cfg = TrainConfig(reward="rlme", questions=questions, mask_low_label_mass=masked)
        with fake.client() as client:
            rewards, metrics = compute_rewards(
                client, cfg, parsed, prompts=["2+2?"] * 4, texts=texts, references=[None] * 4,
                anchored=[False] * 4, rule=None,
            )  # fmt: skip
        assert metrics["reward/low_label_mass_frac"] == 0.25
        assert rewards[1].isnan().item() is masked and not rewards[[0, 2, 3]].isnan().any()
    # NaN leaves the group's mean and std and gets advantage 0.
    advantages = group_advantages(torch.tensor([[1.0, math.nan, 3.0, 5.0]]), scale_by_std=False)
    assert advantages.tolist() == [[-2.0, 0.0, 0.0, 2.0]]


# ---------------------------------------------------------------- config and data


def test_load_config_yaml_json_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("group_size: 4\nreward: rlvr\ndata: arith\n")
    assert load_config(tmp_path / "a.yaml").group_size == 4
    (tmp_path / "b.json").write_text(json.dumps({"lr": 3e-6}))
    assert load_config(tmp_path / "b.json").lr == 3e-6
    (tmp_path / "y.yaml").write_text("lr: 1e-5\nkl_coef: 0\n")  # YAML 1.1 reads 1e-5 as a string
    assert load_config(tmp_path / "y.yaml").lr == 1e-5
    (tmp_path / "t.yaml").write_text("group_size: four\n")
    with pytest.raises(ValueError, match="group_size must be int"):
        load_config(tmp_path / "t.yaml")
    (tmp_path / "c.yaml").write_text("grup_size: 4\n")
    with pytest.raises(ValueError, match="grup_size"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="group_size"):
        TrainConfig(group_size=1)
    with pytest.raises(ValueError, match="needs a `rubric` or `questions`"):
        TrainConfig(reward="mixture", rubric=None)


def test_example_config_and_shipped_data_load() -> None:
    root = Path(__file__).resolve().parents[1]
    load_config(root / "examples" / "train_polite.yaml")
    load_config(root / "examples" / "train_lists.yaml")
    assert len(load_rows("polite")) >= 50
    assert all(r["reference"] for r in load_rows("arith"))
    assert len(load_rows("lists")) == 48


def test_resolve_rule_defaults_and_errors() -> None:
    arith, lists = load_rows("arith"), load_rows("lists")
    assert resolve_rule(TrainConfig(data="arith", reward="rlvr"), arith) == "reference"
    assert resolve_rule(TrainConfig(data="lists"), lists) == "numbered_list"
    assert resolve_rule(TrainConfig(data="polite"), load_rows("polite")) == "polite"
    custom = [{"prompt": "Hi", "reference": "Hello"}]
    assert resolve_rule(TrainConfig(data="x.jsonl"), custom) == "reference"  # every row has a reference
    assert resolve_rule(TrainConfig(data="x.jsonl"), [{"prompt": "Hi"}]) is None  # nothing to check
    assert resolve_rule(TrainConfig(data="x.jsonl", rule="polite"), [{"prompt": "Hi"}]) == "polite"
    with pytest.raises(ValueError, match="needs a 'reference' on every data row"):
        resolve_rule(TrainConfig(data="lists", rule="reference"), lists)
    with pytest.raises(ValueError, match="needs a rule"):
        resolve_rule(TrainConfig(data="x.jsonl", reward="rlvr"), [{"prompt": "Hi"}])
    with pytest.raises(ValueError, match="rule must be one of"):
        TrainConfig(rule="regex")


def test_step_rows_walks_shuffled_epochs() -> None:
    indices = [i for step in range(1, 6) for i in step_rows(num_rows=5, per_step=2, step=step, seed=0)]
    assert sorted(indices[:5]) == sorted(indices[5:]) == [0, 1, 2, 3, 4]  # two full epochs
    assert step_rows(5, 2, 3, seed=0) == step_rows(5, 2, 3, seed=0)  # a pure function: resumable


def test_a_missing_checkpoint_says_so(tmp_path: Path) -> None:
    from rlme.trainer.dpo import MetaRewardingConfig

    missing = str(tmp_path / "runs" / "lists" / "checkpoints" / "step_000010")
    with pytest.raises(ValueError, match="not a checkpoint of this trainer"):
        TrainConfig(resume=missing)
    with pytest.raises(ValueError, match="not a checkpoint of this trainer"):
        MetaRewardingConfig(resume=missing)


def test_example_configs_leave_base_url_to_the_environment() -> None:
    for path in (Path(__file__).parents[1] / "examples").glob("*.yaml"):
        assert "\nbase_url:" not in path.read_text(), path
