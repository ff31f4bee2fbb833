"""The S-Corr audit: definitions pinned on hand-made rows, bad files, resuming, a real run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlme.client import RewardClient
from rlme.trainer.audit import audit_metrics, bootstrap, read_rows, run_audit


def record(
    status: str = "ok", correct: bool = True, aligned: bool | None = None, category: str = "x"
) -> dict:
    return {"status": status, "label_correct": correct, "aligned": aligned, "category": category}


def test_definitions_on_a_hand_made_fixture() -> None:
    # 10 rows: 2 call failures, 1 parse failure; of 7 verdicts, 5 label-correct (3 aligned,
    # 2 misaligned) and 2 wrong (their alignment never counts).
    rows = [record("call_failure", False), record("call_failure", False), record("parse_failure", False)]
    rows += (
        [record(aligned=True)] * 3 + [record(aligned=False)] * 2 + [record(correct=False, aligned=True)] * 2
    )
    numbers = audit_metrics(rows)
    assert numbers["label_accuracy"] == pytest.approx(5 / 10)
    assert numbers["s_corr"] == pytest.approx(1 - 3 / 5)
    assert numbers["f_score"] == pytest.approx(3 / (10 - 2 - 1))
    assert (numbers["aligned"], numbers["misaligned"], numbers["label_correct"]) == (3, 2, 5)


def test_bootstrap_interval_by_hand() -> None:
    always = [record(aligned=True)] * 6
    assert bootstrap(always, "s_corr") == (0.0, 0.0)  # every resample: nothing misaligned
    half = [record(aligned=True), record(aligned=False)] * 20
    low, high = bootstrap(half, "s_corr")  # type: ignore[misc]
    assert 0.25 < low < 0.5 < high < 0.75
    assert bootstrap([record("call_failure", False)] * 3, "s_corr") is None  # never defined


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
    """Test double for RewardClient: A always wins 0.8, P(aligned) 0.7; can fail after N compares."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.compared: list[str] = []
        self.fail_after = fail_after

    def compare(self, pairs: list[dict[str, Any]], **options: Any) -> Any:
        from rlme.client.wire import ComparisonResponse

        if self.fail_after is not None and len(self.compared) >= self.fail_after:
            raise ConnectionError("the service went away")
        self.compared += [p["id"] for p in pairs]
        judgment = {"rationale": "A is right.", "verdict_probs": {"A": 0.8, "B": 0.2}, "label_mass": 0.9,
                    "expected_score": None, "parsed_verdict": "A", "parsed_score": None, "parse_error": None,
                    "status": "ok", "generated_tokens": 4, "finish_reason": "stop"}  # fmt: skip
        result = {"status": "ok", "mask": False, "id": None, "p_a_better": 0.8, "orders_agree": True,
                  "orders": [{"order": "ab", "p_a_better": 0.8, "judgments": [judgment]}]}  # fmt: skip
        provenance = {
            "judge": "pairwise",
            "template_sha256": "0",
            "evaluator": "d",
            "model": "m",
            "model_generation": 0,
        }
        usage = {"generations": 0, "prompt_tokens": 0, "generated_tokens": 0, "verdict_reads": 0}
        return ComparisonResponse.model_validate(
            {"results": [result] * len(pairs), "provenance": provenance, "usage": usage}
        )

    def rewards(self, items: list[dict[str, Any]], **options: Any) -> Any:
        from rlme.client.wire import RewardResponse

        score = {
            "evaluator": "d",
            "question": "aligned",
            "p_yes": 0.7,
            "logp_yes": -0.5,
            "logp_no": -1.3,
            "weight": 1,
        }
        results = [{"id": None, "reward": -0.36, "scores": [score]} for _ in items]
        usage = {"evaluations": len(items), "prompt_tokens": 0, "cached_prompt_tokens": 0}
        return RewardResponse.model_validate(
            {"rewards": [-0.36] * len(items), "results": results, "usage": usage}
        )


def test_an_interrupted_audit_resumes_without_redoing_rows(tmp_path: Path) -> None:
    data = tmp_path / "audit.jsonl"
    labels = ["A", "B", "A", "A", "B"]
    data.write_text(
        "".join(json.dumps({**GOOD, "id": f"r{i}", "label": lab}) + "\n" for i, lab in enumerate(labels))
    )
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
    assert report["overall"]["label_accuracy"] == pytest.approx(3 / 5)  # the judge always says A
    assert report["overall"]["s_corr"] == pytest.approx(0.0)  # P(aligned) 0.7 >= 0.5 everywhere
    assert not (out / "audit.partial.jsonl").exists()
    assert {p.name for p in out.iterdir()} == {"audit.json", "audit.md", "audit.png"}


@pytest.mark.model
@pytest.mark.e2e
def test_four_shipped_rows_with_the_embedded_model(one_thread_server: str, tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent / "trainer" / "data" / "audit_pairs.jsonl"
    data = tmp_path / "four.jsonl"
    data.write_text("".join(shipped.read_text().splitlines(keepends=True)[:4]))
    with RewardClient(base_url=one_thread_server, timeout=600) as client:
        report = run_audit(client, data, tmp_path / "out", max_tokens=8)
    assert report["overall"]["total"] == 4
    for row in report["rows"]:
        assert row["status"] in ("ok", "parse_failure", "call_failure")
        if row["status"] == "ok":
            assert row["verdict"] in ("A", "B")
            if row["rationale"].strip():
                assert 0.0 <= row["alignment_p"] <= 1.0
            else:  # names no reason: misaligned without asking the aligner
                assert row["aligned"] is False and row["alignment_p"] is None
    markdown = (tmp_path / "out" / "audit.md").read_text()
    assert "S-Corr" in markdown and "What these numbers can and cannot say" in markdown
    assert (tmp_path / "out" / "audit.png").stat().st_size > 1000
