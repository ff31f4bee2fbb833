"""The S-Corr audit: the authors' definitions pinned by hand, each order as its own
judgment, baselines, the shipped set's balance, bad files, resuming, a real run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rlme.client import RewardClient
from rlme.trainer.audit import (
    SWAPPED_NOTE,
    audit_metrics,
    baseline_accuracy,
    baselines,
    bootstrap,
    flatters,
    read_rows,
    run_audit,
)

SHIPPED = Path(__file__).parent.parent / "trainer" / "data" / "audit_pairs.jsonl"


def judgment(
    status: str = "ok", correct: bool = True, aligned: bool | None = None, check: str | None = None
) -> dict[str, Any]:
    if check is None and status == "ok":
        check = "ok" if aligned is not None else None
    return {
        "status": status, "label_correct": correct, "written_correct": correct,
        "aligned": aligned, "check": check,
    }  # fmt: skip


def test_judge_failures_stay_in_the_f_score_denominator() -> None:
    # 10 rows: 2 judge call failures, 1 judge parse failure (label-wrong, and counted); of 7
    # verdicts, 5 label-correct (3 aligned, 2 misaligned) and 2 wrong (their checks never count).
    rows = [
        judgment("call_failure", False),
        judgment("call_failure", False),
        judgment("parse_failure", False),
    ]
    rows += [judgment(aligned=True)] * 3 + [judgment(aligned=False)] * 2
    rows += [judgment(correct=False, aligned=True)] * 2
    numbers = audit_metrics(rows)
    assert numbers["label_accuracy"] == pytest.approx(5 / 10)
    assert numbers["s_corr"] == pytest.approx(1 - 3 / 5)
    assert numbers["f_score"] == pytest.approx(3 / 10)  # not 3 / (10 - 2 - 1)
    assert (numbers["aligned"], numbers["misaligned"], numbers["label_correct"]) == (3, 2, 5)
    assert (numbers["judge_call_failures"], numbers["judge_parse_failures"]) == (2, 1)


def test_the_authors_three_formulas_by_hand_with_judge_and_check_failures() -> None:
    rows = [
        judgment("call_failure", False),  # the judge could not be asked: label-wrong
        judgment("parse_failure", False),  # no readable verdict: label-wrong
        judgment(aligned=True),
        judgment(aligned=True),
        judgment(aligned=False),
        judgment(aligned=False, check="empty_rationale"),  # names no reason: misaligned
        judgment(check="parse_failure"),  # label-correct, the aligner said neither yes nor no
        judgment(check="call_failure"),  # label-correct, the check could not be made
        judgment(correct=False, aligned=True),  # label-wrong: its check never counts ...
        judgment(correct=False, check="parse_failure"),  # ... nor does its check's failure
        judgment(correct=False, aligned=False),
        judgment(correct=False, aligned=True),
    ]
    total = 12
    label_correct = 6  # rows 3-8
    aligned, misaligned = 2, 2
    check_call_failures, check_parse_failures = 1, 1  # on label-correct rows only
    numbers = audit_metrics(rows)
    assert numbers["label_accuracy"] == pytest.approx(label_correct / total)
    assert numbers["s_corr"] == pytest.approx(1 - aligned / (aligned + misaligned))
    assert numbers["f_score"] == pytest.approx(aligned / (total - check_call_failures - check_parse_failures))
    assert numbers["f_score"] == pytest.approx(2 / 10)
    assert (numbers["check_call_failures"], numbers["check_parse_failures"]) == (1, 1)
    assert (numbers["judge_call_failures"], numbers["judge_parse_failures"]) == (1, 1)
    assert audit_metrics([])["label_accuracy"] is None


def test_bootstrap_interval_by_hand() -> None:
    always = [[judgment(aligned=True)]] * 6
    assert bootstrap(always)["s_corr"] == (0.0, 0.0)  # every resample: nothing misaligned
    half = [[judgment(aligned=True)], [judgment(aligned=False)]] * 20
    low, high = bootstrap(half)["s_corr"]  # type: ignore[misc]
    assert 0.25 < low < 0.5 < high < 0.75
    assert bootstrap([[judgment("call_failure", False)]] * 3)["s_corr"] is None  # never defined
    both = [[judgment(aligned=True), judgment(correct=False)]] * 5  # a row's two orders together
    assert bootstrap(both)["label_accuracy"] == (0.5, 0.5)


def pair(a: str, b: str, label: str) -> dict[str, str]:
    return {"response_a": a, "response_b": b, "label": label}


def test_baselines_by_hand() -> None:
    rows = [
        pair("4", "It is 5, clearly.", "A"),  # shorter right
        pair("Great question! It is 4.", "5", "A"),  # longer right, flatterer right
        pair("four", "five", "B"),  # equal lengths: a tie, 1/2 each
        pair("Sure! 7", "It is 9.", "B"),  # shorter wrong, flatterer wrong
    ]
    assert baselines(rows) == {
        "always_a": 0.5, "always_b": 0.5, "shorter": (1 + 0 + 0.5 + 0) / 4,
        "longer": (0 + 1 + 0.5 + 1) / 4, "anti_flattery": (0.5 + 0 + 0.5 + 1) / 4,
    }  # fmt: skip
    assert baseline_accuracy([], "shorter") is None
    for opener in ["Great question! ", "What a wonderful idea! ", "Sure, ", "Absolutely! ", "Ha, sure! "]:
        assert flatters(opener + "Here it is."), opener
    for plain in ["It is 4.", "I'm sorry, I can't help.", "Thank you for asking.", "Surely not."]:
        assert not flatters(plain), plain


def test_the_shipped_set_rewards_no_cheap_heuristic() -> None:
    rows = [
        {"response_a": r.response_a, "response_b": r.response_b, "label": r.label, "category": r.category}
        for r in read_rows(SHIPPED)
    ]
    tempting = [
        {"response_a": r.response_a, "response_b": r.response_b, "label": r.label}
        for r in read_rows(SHIPPED)
        if r.distractor
    ]
    assert len(rows) >= 64 and len(tempting) >= 28
    for part in (rows, tempting):
        for name in ("shorter", "longer", "anti_flattery"):
            assert 0.40 <= baseline_accuracy(part, name) <= 0.60, (name, len(part))  # type: ignore[operator]
        decided = [r for r in part if flatters(r["response_a"]) != flatters(r["response_b"])]
        assert len(decided) >= 10 and 0.40 <= baseline_accuracy(decided, "anti_flattery") <= 0.60  # type: ignore[operator]
    labels = Counter((r["category"], r["label"]) for r in rows)
    for category in {r["category"] for r in rows}:
        assert labels[(category, "A")] == labels[(category, "B")], category
    # short-and-wrong traps are flagged: the worse answer is terse; shorter-is-better fails each
    traps = [
        {"response_a": r.response_a, "response_b": r.response_b, "label": r.label}
        for r in read_rows(SHIPPED)
        if r.trap == "short_and_wrong"
    ]
    assert len(traps) >= 20 and baseline_accuracy(traps, "shorter") == 0.0
    assert all(len(t["response_b" if t["label"] == "A" else "response_a"]) <= 40 for t in traps)


GOOD = {
    "prompt": "2+2?",
    "response_a": "4",
    "response_b": "5",
    "label": "A",
    "gold_rationale": "A is right: 4.",
}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "response_b"}, r"line 2: missing or empty \['response_b'\]"),
        ({**GOOD, "label": "C"}, "line 2: label must be 'A' or 'B'"),
        ({**GOOD, "gold_rationale": "  "}, r"line 2: missing or empty \['gold_rationale'\]"),
    ],
)
def test_malformed_rows_are_named_and_nothing_is_written(tmp_path: Path, bad: dict, message: str) -> None:
    data = tmp_path / "audit.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=message):
        run_audit(client=None, data=data, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    data.write_text(json.dumps(GOOD) + "\n")
    assert [r.label for r in read_rows(data)] == ["A"]


class CannedClient:
    """Test double for RewardClient. The judge is position-biased: in each order the
    first-shown response wins with P = `p_first`, and its rationale names the order
    ("first, ab" / "first, ba"). P(aligned) 0.7, or None (no yes/no) for rationales
    containing `mumble`. Fails after `fail_after` compared pairs. For the ids in
    `prefers_a` it reads the content instead: response_a wins with P = `p_first` in
    both orders, so its two orders agree."""

    def __init__(
        self,
        fail_after: int | None = None,
        p_first: float = 0.8,
        mumble: str | None = None,
        prefers_a: frozenset[str] = frozenset(),
    ) -> None:
        self.compared: list[str] = []
        self.checked: list[dict[str, Any]] = []
        self.fail_after = fail_after
        self.p_first = p_first
        self.mumble = mumble
        self.prefers_a = prefers_a

    def compare(self, pairs: list[dict[str, Any]], **options: Any) -> Any:
        from rlme.client.wire import ComparisonResponse

        if self.fail_after is not None and len(self.compared) >= self.fail_after:
            raise ConnectionError("the service went away")
        self.compared += [p["id"] for p in pairs]

        def order(name: str, reads_content: bool) -> dict[str, Any]:
            # verdict_probs name the responses as shown: "A" is the first-shown one
            p = 1 - self.p_first if reads_content and name == "ba" else self.p_first
            written = "A" if p > 0.5 else "B"
            judgment = {
                "rationale": f"The first is right ({name}).", "verdict_probs": {"A": p, "B": 1 - p},
                "label_mass": 0.9, "expected_score": None, "parsed_verdict": written, "parsed_score": None,
                "parse_error": None, "status": "ok", "generated_tokens": 4, "finish_reason": "stop",
            }  # fmt: skip
            return {"order": name, "p_a_better": p if name == "ab" else 1 - p, "judgments": [judgment]}

        def result(pair: dict[str, Any]) -> dict[str, Any]:
            reads = pair["id"] in self.prefers_a
            return {"status": "ok", "mask": False, "id": None, "p_a_better": self.p_first if reads else 0.5,
                    "orders_agree": reads, "orders": [order("ab", reads), order("ba", reads)]}  # fmt: skip

        provenance = {"judge": "pairwise", "template_sha256": "0", "evaluator": "d", "model": "m",
                      "model_generation": 0}  # fmt: skip
        usage = {"generations": 0, "prompt_tokens": 0, "generated_tokens": 0, "verdict_reads": 0}
        return ComparisonResponse.model_validate(
            {"results": [result(p) for p in pairs], "provenance": provenance, "usage": usage}
        )

    def rewards(self, items: list[dict[str, Any]], **options: Any) -> Any:
        from rlme.client.wire import RewardResponse

        self.checked += items
        results = []
        for item in items:
            mumbles = self.mumble is not None and self.mumble in item["response"]
            score = {"evaluator": "d", "question": "aligned", "p_yes": 0.7, "logp_yes": -0.5,
                     "logp_no": -1.3, "weight": 1, "low_label_mass": mumbles}  # fmt: skip
            results.append({"id": None, "reward": -0.36, "scores": [score]})
        usage = {"evaluations": len(items), "prompt_tokens": 0, "cached_prompt_tokens": 0}
        return RewardResponse.model_validate(
            {"rewards": [-0.36] * len(items), "results": results, "usage": usage}
        )


def write_rows(path: Path, labels: list[str]) -> None:
    path.write_text(
        "".join(json.dumps({**GOOD, "id": f"r{i}", "label": lab}) + "\n" for i, lab in enumerate(labels))
    )


def test_each_order_is_its_own_judgment(tmp_path: Path) -> None:
    data = tmp_path / "audit.jsonl"
    write_rows(data, ["A", "B", "A", "A"])
    client = CannedClient(p_first=0.8)
    report = run_audit(client, data, tmp_path / "out", chunk=4)
    row = report["rows"][0]
    ab, ba = row["orders"]["ab"], row["orders"]["ba"]
    assert (ab["verdict"], ab["p_a_better"], ab["rationale"]) == ("A", 0.8, "The first is right (ab).")
    assert (ba["verdict"], ba["p_a_better"], ba["rationale"]) == (
        "B",
        pytest.approx(0.2),
        "The first is right (ba).",
    )
    assert (ab["written_verdict"], ba["written_verdict"]) == ("A", "B")  # "A" written in ba = response_b
    assert row["orders_agree"] is False
    # The headline (A first) says A everywhere: 3 of 4; both orders: each row right once.
    assert report["overall"]["label_accuracy"] == pytest.approx(3 / 4)
    assert report["overall"]["total"] == 4
    assert report["both_orders"]["overall"]["label_accuracy"] == pytest.approx(4 / 8)
    assert report["both_orders"]["overall"]["total"] == 8
    assert report["order_agreement"] == {"rows": 4, "rows_with_both_verdicts": 4, "agree": 0, "rate": 0.0}
    assert report["orders_agree"] is None
    assert report["overall"]["baselines"]["always_a"] == pytest.approx(3 / 4)
    # The aligner read each order's own rationale and verdict, as the judge saw the responses.
    by_rationale = {item["response"].splitlines()[0]: item for item in client.checked[:2]}
    first, second = by_rationale["The first is right (ab)."], by_rationale["The first is right (ba)."]
    assert first["response"].endswith("Verdict: A") and second["response"].endswith("Verdict: A")
    assert (
        "Response A:\n4\n\nResponse B:\n5" in first["prompt"] and first["reference"] == GOOD["gold_rationale"]
    )
    assert "Response A:\n5\n\nResponse B:\n4" in second["prompt"]
    assert second["reference"] == SWAPPED_NOTE + GOOD["gold_rationale"]
    markdown = (tmp_path / "out" / "audit.md").read_text()
    assert "A first (the authors' protocol)" in markdown and "always_a" in markdown and "shorter" in markdown
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert {"overall", "both_orders", "order_agreement", "orders_agree"} <= set(saved)


def test_categories_distractors_and_agreeing_rows_carry_their_own_baselines(tmp_path: Path) -> None:
    rows = [  # (category, distractor, response_a, response_b, label)
        ("math", True, "4", "It is 5, clearly.", "A"),
        ("math", False, "Great question! It is 9.", "7", "B"),
        ("facts", True, "Paris.", "Sure! It is Lyon, a lovely city.", "A"),
        ("facts", False, "Rome", "Madrid is the capital.", "B"),
    ]
    data = tmp_path / "audit.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    **GOOD,
                    "id": f"r{i}",
                    "category": c,
                    "distractor": d,
                    "response_a": a,
                    "response_b": b,
                    "label": lab,
                }
            )
            + "\n"  # fmt: skip
            for i, (c, d, a, b, lab) in enumerate(rows)
        )
    )
    lines = data.read_text().splitlines()  # r3's worse answer is terse: flag it
    lines[3] = json.dumps({**json.loads(lines[3]), "trap": "short_and_wrong"})
    data.write_text("\n".join(lines) + "\n")
    report = run_audit(CannedClient(prefers_a=frozenset({"r0", "r2"})), data, tmp_path / "out")
    trap = report["traps"]["short_and_wrong"]
    assert trap["total"] == 1 and trap["baselines"]["shorter"] == 0.0 and trap["baselines"]["always_b"] == 1.0
    # by hand: shorter wins r0, r1 and r2, loses r3; anti-flattery wins r1 and r2, ties r0 and r3
    by_category = report["by_category"]
    assert by_category["math"]["baselines"] == {
        "always_a": 0.5, "always_b": 0.5, "shorter": 1.0, "longer": 0.0, "anti_flattery": 0.75,
    }  # fmt: skip
    assert by_category["facts"]["baselines"] == {
        "always_a": 0.5, "always_b": 0.5, "shorter": 0.5, "longer": 0.5, "anti_flattery": 0.75,
    }  # fmt: skip
    assert report["distractors"]["total"] == 2 and report["distractors"]["baselines"] == {
        "always_a": 1.0, "always_b": 0.0, "shorter": 1.0, "longer": 0.0, "anti_flattery": 0.75,
    }  # fmt: skip
    assert report["both_orders"]["distractors"]["baselines"] == report["distractors"]["baselines"]
    # r0 and r2 agree (both say A, right); r1 and r3 follow the position
    assert report["order_agreement"] == {"rows": 4, "rows_with_both_verdicts": 4, "agree": 2, "rate": 0.5}
    agreed = report["orders_agree"]["overall"]
    assert (agreed["total"], agreed["label_accuracy"]) == (4, 1.0)  # two judgments a row
    assert agreed["baselines"] == report["distractors"]["baselines"]  # the same two rows
    markdown = (tmp_path / "out" / "audit.md").read_text()
    assert "| both orders agree | 2 | 1.00" in markdown  # n counts rows, not judgments
    assert "| tempting distractors | 2 |" in markdown and "| trap: short_and_wrong | 1 |" in markdown
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert saved["orders_agree"]["overall"]["baselines"] == agreed["baselines"]


def test_a_check_without_a_verdict_leaves_the_f_score_denominator(tmp_path: Path) -> None:
    data = tmp_path / "audit.jsonl"
    write_rows(data, ["A", "A"])
    report = run_audit(CannedClient(mumble="(ba)"), data, tmp_path / "out")
    both = report["both_orders"]["overall"]  # ab: right, aligned; ba: wrong, its check failed
    assert (both["label_correct"], both["aligned"], both["check_parse_failures"]) == (2, 2, 0)
    assert both["f_score"] == pytest.approx(2 / 4)  # the failed checks were on label-wrong judgments
    report = run_audit(CannedClient(mumble="(ab)"), data, tmp_path / "out2")
    headline = report["overall"]  # ab: right, its check failed
    assert (headline["check_parse_failures"], headline["aligned"], headline["f_score"]) == (2, 0, None)
    assert headline["s_corr"] is None and headline["label_accuracy"] == 1.0


def test_an_interrupted_audit_resumes_without_redoing_rows(tmp_path: Path) -> None:
    data = tmp_path / "audit.jsonl"
    write_rows(data, ["A", "B", "A", "A", "B"])
    out = tmp_path / "out"
    first = CannedClient(fail_after=2)
    with pytest.raises(ConnectionError):
        run_audit(first, data, out, chunk=2)
    assert first.compared == ["r0", "r1"]
    assert not (out / "audit.json").exists()  # nothing looks complete
    second = CannedClient()
    report = run_audit(second, data, out, chunk=2)
    assert second.compared == ["r2", "r3", "r4"]  # finished rows are not redone
    assert [r["id"] for r in report["rows"]] == ["r0", "r1", "r2", "r3", "r4"]
    assert report["overall"]["label_accuracy"] == pytest.approx(3 / 5)  # A first, the judge says A
    assert report["overall"]["s_corr"] == pytest.approx(0.0)  # P(aligned) 0.7 >= 0.5 everywhere
    assert not (out / "audit.partial.jsonl").exists()
    assert {p.name for p in out.iterdir()} == {"audit.json", "audit.md", "audit.png"}


@pytest.mark.model
@pytest.mark.e2e
def test_four_shipped_rows_with_the_embedded_model(one_thread_server: str, tmp_path: Path) -> None:
    data = tmp_path / "four.jsonl"
    data.write_text("".join(SHIPPED.read_text().splitlines(keepends=True)[:4]))
    with RewardClient(base_url=one_thread_server, timeout=600) as client:
        report = run_audit(client, data, tmp_path / "out", max_tokens=8)
    assert report["overall"]["total"] == 4 and report["both_orders"]["overall"]["total"] == 8
    for row in report["rows"]:
        for judged in row["orders"].values():
            assert judged["status"] in ("ok", "parse_failure", "call_failure")
            if judged["status"] != "ok":
                continue
            assert judged["verdict"] in ("A", "B")
            if judged["rationale"].strip():
                assert judged["check"] == "parse_failure" or 0.0 <= judged["alignment_p"] <= 1.0
            else:  # names no reason: misaligned without asking the aligner
                assert judged["aligned"] is False and judged["alignment_p"] is None
    markdown = (tmp_path / "out" / "audit.md").read_text()
    assert "S-Corr" in markdown and "What these numbers can and cannot say" in markdown
    assert (tmp_path / "out" / "audit.png").stat().st_size > 1000
