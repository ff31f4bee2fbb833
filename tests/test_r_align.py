"""R-Align training of a judge: the verdict rule, the label-gated reward, the split, one step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlme.client.testing import FakeRewardService
from rlme.trainer.audit import read_rows
from rlme.trainer.grpo import TrainConfig, group_advantages
from rlme.trainer.r_align import alignment_item, rewards, split, training_rows
from rlme.trainer.rules import judge_verdict_rule

SHIPPED = Path(__file__).parents[1] / "trainer" / "data" / "audit_pairs.jsonl"


@pytest.mark.parametrize(
    ("text", "label", "score"),
    [
        ("B is wrong about the date.\nVerdict: A", "A", 1.0),
        ("B is wrong.\nVerdict: **A**", "A", 1.0),
        ("Verdict: B at first... no.\nVerdict: A", "A", 1.0),  # the last verdict counts
        ("A is better.\nVerdict: B", "A", 0.0),
        ("A is better.", "A", 0.0),  # no verdict written
        ("Verdict: Amazing", "A", 0.0),  # not the label A
    ],
)
def test_judge_verdict_rule(text: str, label: str, score: float) -> None:
    assert judge_verdict_rule(text, label) == score


def test_judge_verdict_rule_needs_a_label() -> None:
    with pytest.raises(ValueError, match="reference label"):
        judge_verdict_rule("Verdict: A", "yes")


def test_advantages_leave_out_failed_checks() -> None:
    rewards_ = torch.tensor([[1.0, float("nan"), 0.0, 2.0]])
    advantages = group_advantages(rewards_, scale_by_std=False)
    assert advantages[0].tolist() == pytest.approx([0.0, 0.0, -1.0, 1.0])  # mean of 1, 0, 2 is 1
    scaled = group_advantages(rewards_, scale_by_std=True)
    std = math.sqrt(2 / 3)
    assert scaled[0].tolist() == pytest.approx([0.0, 0.0, -1 / std, 1 / std], rel=1e-5)
    assert not group_advantages(torch.tensor([[float("nan")] * 2]), True).isnan().any()


def test_split_and_held_out_rows_are_an_audit_file(tmp_path: Path) -> None:
    rows = read_rows(SHIPPED)
    train, held = split(rows, 4)
    assert len(held) == len(rows) // 4 and len(train) == len(rows) - len(held)
    assert {r.index for r in held}.isdisjoint({r.index for r in train})
    trainer_rows = training_rows(str(SHIPPED), 4, tmp_path)
    assert len(trainer_rows) == len(train)
    assert [r.prompt for r in read_rows(tmp_path / "held_out.jsonl")] == [r.prompt for r in held]
    first = trainer_rows[0]
    assert first["reference"] in ("A", "B") and "<response_a>" in first["prompt"] and first["system"]


@pytest.mark.parametrize("every", [2, 3, 4, 5])
def test_held_out_rows_are_stratified_by_label_and_category(every: int) -> None:
    rows = read_rows(SHIPPED)
    _, held = split(rows, every)
    always_a = sum(r.label == "A" for r in held) / len(held)
    assert abs(always_a - 0.5) <= 1 / len(held) + 1e-9  # a constant verdict scores 0.5, +- one row
    for category in {r.category for r in rows}:
        for label in ("A", "B"):
            n = sum(r.category == category and r.label == label for r in rows)
            kept = sum(r.category == category and r.label == label for r in held)
            assert abs(kept - n / every) < 1, (category, label)


def test_an_unbalanced_file_keeps_its_label_shares_when_split() -> None:
    from dataclasses import replace

    rows = [replace(r, label="A" if i % 3 else "B") for i, r in enumerate(read_rows(SHIPPED))]
    _, held = split(rows, 4)
    share = sum(r.label == "A" for r in rows) / len(rows)
    assert abs(sum(r.label == "A" for r in held) / len(held) - share) <= 1 / len(held)


def test_reward_is_label_gated_and_failed_alignment_checks_are_not_numbers(tmp_path: Path) -> None:
    rows = read_rows(SHIPPED)[:4]
    labels = [r.label for r in rows]
    other = {"A": "B", "B": "A"}
    texts = [
        f"It names the decisive fact.\nVerdict: {labels[0]}",  # correct, aligner p = 0.8
        f"Sounds nicer.\nVerdict: {other[labels[1]]}",  # wrong: nothing, whatever the reasons
        "I cannot decide.",  # no verdict: wrong
        f"MUMBLE\nVerdict: {labels[3]}",  # correct, but the aligner does not answer yes/no
    ]
    fake = FakeRewardService(p_yes=lambda item: None if "MUMBLE" in item.response else 0.8)
    cfg = TrainConfig(reward="r_align", rlvr_weight=1.0, rlme_weight=2.0)
    with fake.client() as client:
        values, metrics = rewards(client, cfg, rows, texts)
    assert values[:3].tolist() == pytest.approx([1.0 + 2.0 * 0.8, 0.0, 0.0])
    assert values[3].isnan()
    sent = fake.requests[0].items
    assert len(sent) == 2  # only label-correct judgments are checked
    assert sent[0].reference == rows[0].gold_rationale
    assert sent[0].response == f"It names the decisive fact.\nVerdict: {labels[0]}"
    assert fake.requests[0].questions[0].requires_reference
    assert metrics["rlvr/accuracy"] == 0.5
    assert metrics["r_align/parsed"] == 0.75
    assert metrics["r_align/alignment_failures"] == 1.0
    assert metrics["reward/low_label_mass_frac"] == 0.25  # the rlme reward's metric, same meaning
    assert metrics["r_align/p_aligned_mean"] == pytest.approx(0.8)
    # mask_low_label_mass: false uses the unanswered check's P(yes) as it is, as the rlme reward does
    unmasked = TrainConfig(reward="r_align", rlvr_weight=1.0, rlme_weight=2.0, mask_low_label_mass=False)
    with fake.client() as client:
        values, metrics = rewards(client, unmasked, rows, texts)
    assert values.tolist() == pytest.approx([1.0 + 2.0 * 0.8, 0.0, 0.0, 1.0 + 2.0 * 0.5])
    assert metrics["r_align/alignment_failures"] == 1.0


def test_a_right_verdict_without_a_rationale_gets_no_alignment_credit() -> None:
    rows = read_rows(SHIPPED)[:2]
    texts = [f"Verdict: {rows[0].label}", f"  \nVerdict: {rows[1].label}"]
    fake = FakeRewardService(p_yes=0.9)
    cfg = TrainConfig(reward="r_align", rlvr_weight=1.0, rlme_weight=2.0)
    with fake.client() as client:
        values, metrics = rewards(client, cfg, rows, texts)
    assert values.tolist() == [1.0, 1.0]  # the label's weight only
    assert fake.requests == []  # the aligner is not asked about nothing


def test_the_audit_counts_an_empty_rationale_as_misaligned() -> None:
    from rlme.trainer.audit import align

    class NoCalls:  # a test double: the aligner must not be asked
        def rewards(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("asked the aligner about an empty rationale")

    empty = {"rationale": "  ", "verdict": "A", "label_correct": True, "aligned": None, "alignment_p": None}
    no_verdict = {"rationale": "B is right.", "verdict": None, "label_correct": False, "aligned": None}
    record = {"orders": {"ab": empty, "ba": no_verdict}}
    align(NoCalls(), [record], None, 0.5)
    assert empty["aligned"] is False and empty["alignment_p"] is None and empty["check"] == "empty_rationale"
    assert no_verdict["aligned"] is None  # no verdict, nothing to check


def test_alignment_item_is_the_audits_layout() -> None:
    from dataclasses import asdict

    from rlme.trainer.audit import alignment_item as audit_item

    row = read_rows(SHIPPED)[0]
    item = alignment_item(row, "  Because of X.  \nVerdict: B")
    assert item["response"] == "Because of X.\nVerdict: B"
    assert item["prompt"].startswith(row.prompt) and "Response B:\n" + row.response_b in item["prompt"]
    assert item == audit_item(asdict(row), "Because of X.", "B", "ab")  # the audit's headline judgment


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="judge_verdict"):
        TrainConfig(reward="r_align", rule="reference")
    with pytest.raises(ValueError, match="warm-up"):
        TrainConfig(reward="rlme", sft_steps=2)
    TrainConfig(reward="r_align", rubric=None)  # needs no rubric: the alignment question is built in


@pytest.mark.model
def test_one_r_align_step_after_an_sft_warm_up(tmp_path: Path) -> None:
    from rlme.trainer.grpo import train

    fake = FakeRewardService(p_yes=lambda item: 0.3 + 0.1 * (len(item.response) % 5))
    cfg = TrainConfig(
        reward="r_align", data=str(SHIPPED), group_size=2, prompts_per_step=2, max_new_tokens=8,
        steps=1, mu=1, sft_steps=2, save_final=False, output_dir=str(tmp_path),
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with fake.client() as client:
            train(cfg, client=client)
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text())
    for name in ("rlvr/accuracy", "r_align/parsed", "r_align/alignment_failures", "loss/cispo"):
        assert math.isfinite(metrics[name]), name
    assert (tmp_path / "held_out.jsonl").is_file()
    sample = json.loads((tmp_path / "samples.jsonl").read_text())
    assert "<response_a>" in sample["prompt"] and len(sample["responses"]) == 2
