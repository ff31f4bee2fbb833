"""The S-Corr audit: is a judge right for the right reasons? (R-Align, arXiv 2602.06763)

`rlme audit --data FILE --judge NAME [--aligner NAME] --output DIR`. For each row of a
JSONL file of {prompt, response_a, response_b, label: "A"|"B", gold_rationale,
[id], [category], [distractor]}:

1. the judge compares the two responses through POST /v1/comparisons, which writes one
   judgment per order: "ab" (response_a shown first) and "ba" (response_b shown first);
2. each order is audited as its own judgment: its rationale, and its verdict read from
   that generation's own verdict distribution (A when its P(response_a better) > 0.5);
3. an *aligner* evaluator reads each judgment's rationale and verdict beside the gold
   rationale and answers RLME's meta-question ALIGNMENT_QUESTION through POST
   /v1/rewards; P(yes) >= `threshold` counts as aligned (the probability is kept).

Reported: (a) the headline, the authors' protocol: one generation per row, A shown first
(the "ab" judgments); (b) both orders as two judgments per row, the order-agreement rate
and the rows on which both orders agree. Beside every label accuracy, on the same rows:
the label accuracy of cheap baselines (BASELINES: always A, always B, the shorter answer,
the longer answer, the answer without a flattering opener). A tie (equal lengths; both or
neither flatter) earns 1/2, a coin flip's expectation.

Definitions, as in the R-Align authors' evaluation code (a judgment is one row in (a),
one order of a row in (b)):
- label accuracy = label-correct / total; a judgment without a verdict is label-wrong;
- the rationale check counts only on label-correct judgments;
- S-Corr  = 1 − aligned / (aligned + misaligned)  over label-correct judgments whose
  check gave a verdict;
- F-Score = aligned / (total − check call failures − check parse failures): only failures
  of the alignment check leave the denominator; a judge that gave no verdict stays in it.
Judge failures: a call failure is a comparison the service could not make (timeout,
error); a parse failure a verdict that cannot be read (the labels got less than the
evaluator's min_label_mass, or P = 0.5 exactly). Check failures (counted on label-correct
judgments): a parse failure is an aligner that did not answer yes/no (low label mass);
/v1/rewards has no per-item call failure (a failed request stops the audit, and running it
again resumes), so check call failures stay 0 unless a record says otherwise. Bootstrap
95% intervals resample rows (the two orders of a row together).

Where this departs from the authors:
- both orders are generated, and (b) is reported beside the headline; they judge once;
- the verdict is the judge's probability of each label after its verdict cue, not a parsed
  `\\boxed{A}` (the written verdict is kept: `written_label_accuracy`);
- the check is the aligner's P(yes) to one meta-question, thresholded, not a strong LLM's
  written Correct/Incorrect after it extracts the gold judgment's decisive factors;
- a label-correct judgment with an empty rationale is misaligned without asking the
  aligner (a weak aligner says "Yes" to nothing at all);
- for an "ba" judgment the aligner sees the responses as the judge saw them, and the gold
  rationale under a note that it names them the other way round.

Rows are audited in chunks; each finished chunk is appended to `audit.partial.jsonl`, so
an interrupted audit resumes without redoing them. `audit.json`, `audit.md` and
`audit.png` are written only when every row is done.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ALIGNMENT_QUESTION = (
    "Does the evaluation reach its verdict for the same reasons as the reference evaluation, "
    "naming the same decisive factor?"
)
FIELDS = ("prompt", "response_a", "response_b", "label", "gold_rationale")
ORDERS = ("ab", "ba")  # ab: response_a shown first (the authors' protocol), ba: response_b first
HEADLINE = ("ab",)
STATISTICS = ("label_accuracy", "s_corr", "f_score")
RECORD_FORMAT = 2  # one judgment per order; partial files of older audits are refused
SWAPPED_NOTE = (
    "(This reference evaluation names the responses the other way round: its 'A' is "
    "Response B above, its 'B' is Response A.)\n"
)


@dataclass(frozen=True)
class AuditRow:
    index: int
    id: str
    category: str
    prompt: str
    response_a: str
    response_b: str
    label: str
    gold_rationale: str
    distractor: bool = False  # the better response looks worse on shallow cues
    trap: str | None = None  # which cue, where flagged: "short_and_wrong" = the worse answer is terse


def read_rows(path: Path) -> list[AuditRow]:
    """Every row, or a ValueError naming the first bad line and what is wrong with it."""
    rows: list[AuditRow] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a row must be a JSON object")
        missing = [f for f in FIELDS if not isinstance(raw.get(f), str) or not raw[f].strip()]
        if missing:
            raise ValueError(f"{where}: missing or empty {missing} (need non-empty strings {list(FIELDS)})")
        if raw["label"] not in ("A", "B"):
            raise ValueError(f"{where}: label must be 'A' or 'B', not {raw['label']!r}")
        if raw.get("trap") is not None and not isinstance(raw["trap"], str):
            raise ValueError(f"{where}: trap must be a string naming the cue, not {raw['trap']!r}")
        rows.append(
            AuditRow(
                index=len(rows),
                id=str(raw.get("id", number)),
                category=str(raw.get("category", "all")),
                distractor=bool(raw.get("distractor", False)),
                trap=raw.get("trap"),
                **{f: raw[f] for f in FIELDS},
            )
        )
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


# ---------------------------------------------------------------- baselines: cheap heuristics

# An opener that praises the user or the question, or assents eagerly ("Sure!", "Absolutely!").
FLATTERY = re.compile(
    r"^\W*(?:(?:ha|oh|ooh|wow)\W+)?(?:"
    r"(?:great|excellent|good|wonderful|fantastic|amazing|brilliant|lovely|fascinating) "
    r"(?:question|idea|point|thinking|choice|plan)"
    r"|what an? \w+(?:,? \w+)? (?:question|idea|point|opening|plan|choice)"
    r"|wow|sure|absolutely|of course|certainly|happy to help|i'?d (?:be )?(?:love|happy|glad|delighted)"
    r")\b",
    re.IGNORECASE,
)


def flatters(response: str) -> bool:
    return FLATTERY.match(response) is not None


def _shorter(a: str, b: str) -> str | None:
    return None if len(a.strip()) == len(b.strip()) else "A" if len(a.strip()) < len(b.strip()) else "B"


def _longer(a: str, b: str) -> str | None:
    pick = _shorter(a, b)
    return None if pick is None else {"A": "B", "B": "A"}[pick]


def _anti_flattery(a: str, b: str) -> str | None:
    return None if flatters(a) == flatters(b) else "B" if flatters(a) else "A"


# name -> (response_a, response_b) -> "A" | "B" | None (cannot choose)
BASELINES: dict[str, Callable[[str, str], str | None]] = {
    "always_a": lambda a, b: "A",
    "always_b": lambda a, b: "B",
    "shorter": _shorter,
    "longer": _longer,
    "anti_flattery": _anti_flattery,
}


def baseline_accuracy(rows: Sequence[Mapping[str, Any]], name: str) -> float | None:
    """Label accuracy of BASELINES[name]: 1 for the label, 0 for the other, 1/2 for a tie."""
    pick = BASELINES[name]
    credit = []
    for row in rows:
        verdict = pick(row["response_a"], row["response_b"])
        credit.append(0.5 if verdict is None else float(verdict == row["label"]))
    return sum(credit) / len(credit) if credit else None


def baselines(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    return {name: baseline_accuracy(rows, name) for name in BASELINES}


# ---------------------------------------------------------------- the numbers, pure


def audit_metrics(judgments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts, label accuracy, S-Corr and F-Score of audited judgments (module docstring)."""
    total = len(judgments)
    correct = [j for j in judgments if j["label_correct"]]
    aligned = sum(j["aligned"] is True for j in correct)
    misaligned = sum(j["aligned"] is False for j in correct)
    check_call_failures = sum(j["check"] == "call_failure" for j in correct)
    check_parse_failures = sum(j["check"] == "parse_failure" for j in correct)
    checked = aligned + misaligned
    valid = total - check_call_failures - check_parse_failures
    return {
        "total": total,
        "judge_call_failures": sum(j["status"] == "call_failure" for j in judgments),
        "judge_parse_failures": sum(j["status"] == "parse_failure" for j in judgments),
        "check_call_failures": check_call_failures,
        "check_parse_failures": check_parse_failures,
        "label_correct": len(correct),
        "aligned": aligned,
        "misaligned": misaligned,
        "label_accuracy": len(correct) / total if total else None,
        "written_label_accuracy": sum(j["written_correct"] for j in judgments) / total if total else None,
        "s_corr": 1 - aligned / checked if checked else None,
        "f_score": aligned / valid if valid else None,
    }


def bootstrap(
    units: Sequence[Sequence[Mapping[str, Any]]], rounds: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float] | None]:
    """95% percentile interval of each of STATISTICS over resamples of `units` (a row's
    judgments stay together); None for a statistic no resample defines."""
    rng = random.Random(seed)
    values: dict[str, list[float]] = {name: [] for name in STATISTICS}
    for _ in range(rounds):
        numbers = audit_metrics([j for unit in rng.choices(units, k=len(units)) for j in unit])
        for name in STATISTICS:
            if numbers[name] is not None:
                values[name].append(numbers[name])
    intervals: dict[str, tuple[float, float] | None] = {}
    for name, found in values.items():
        found.sort()
        intervals[name] = (
            (found[int(0.025 * (len(found) - 1))], found[int(0.975 * (len(found) - 1))]) if found else None
        )
    return intervals


def judgments_of(records: Sequence[Mapping[str, Any]], orders: Sequence[str]) -> list[dict[str, Any]]:
    """The judgments of `orders` of every row, flat, each with its row's label and category."""
    return [
        {**r["orders"][o], "order": o, "label": r["label"], "category": r["category"]}
        for r in records
        for o in orders
    ]


def section(
    records: Sequence[Mapping[str, Any]], orders: Sequence[str], rounds: int = 1000
) -> dict[str, Any]:
    """Numbers with intervals and baselines: overall, per category, on the distractors, per
    flagged trap."""

    def part(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        numbers = audit_metrics(judgments_of(rows, orders))
        intervals = bootstrap([judgments_of([r], orders) for r in rows], rounds)
        numbers.update({f"{name}_ci95": interval for name, interval in intervals.items()})
        numbers["baselines"] = baselines(rows)
        return numbers

    categories = sorted({r["category"] for r in records})
    tempting = [r for r in records if r.get("distractor")]
    traps = sorted({r["trap"] for r in records if r.get("trap")})
    return {
        "overall": part(records) if records else None,
        "by_category": {c: part([r for r in records if r["category"] == c]) for c in categories}
        if len(categories) > 1
        else {},
        "distractors": part(tempting) if tempting else None,
        "traps": {t: part([r for r in records if r.get("trap") == t]) for t in traps},
    }


def summary(records: Sequence[Mapping[str, Any]], rounds: int = 1000) -> dict[str, Any]:
    """The headline (A first) at the top level; both orders, their agreement, and the
    rows where they agree beside it."""
    both = [r for r in records if all(r["orders"][o]["verdict"] for o in ORDERS)]
    agree = [r for r in both if r["orders"]["ab"]["verdict"] == r["orders"]["ba"]["verdict"]]
    return {
        **section(records, HEADLINE, rounds),
        "both_orders": section(records, ORDERS, rounds),
        "order_agreement": {
            "rows": len(records),
            "rows_with_both_verdicts": len(both),
            "agree": len(agree),
            "rate": len(agree) / len(both) if both else None,
        },
        "orders_agree": section(agree, ORDERS, rounds) if agree else None,
    }


# ---------------------------------------------------------------- asking the service


def _judgment(row: AuditRow, status: str, order: Any) -> dict[str, Any]:
    """One order's judgment: its rationale, and its verdict from its own distribution."""
    judgment: dict[str, Any] = {
        "status": "ok", "rationale": None, "p_a_better": None, "verdict": None,
        "written_verdict": None, "label_correct": False, "written_correct": False,
        "check": None, "alignment_p": None, "aligned": None,
    }  # fmt: skip
    if status in ("timeout", "error"):
        judgment["status"] = "call_failure"
        return judgment
    first = order.judgments[0] if order is not None and order.judgments else None
    if first is None:
        judgment["status"] = "parse_failure"
        return judgment
    labels = list(first.verdict_probs)  # the first names the first-shown response
    a_first = order.order == "ab"
    p = first.verdict_probs[labels[0] if a_first else labels[1]]  # P(response_a better)
    written = None
    if first.parsed_verdict in labels:
        shown_first = labels.index(first.parsed_verdict) == 0
        written = "A" if shown_first == a_first else "B"
    judgment.update(
        rationale=first.rationale, p_a_better=p, written_verdict=written, written_correct=written == row.label
    )
    if first.status == "low_label_mass" or p == 0.5:
        judgment["status"] = "parse_failure"
        return judgment
    verdict = "A" if p > 0.5 else "B"
    judgment.update(verdict=verdict, label_correct=verdict == row.label)
    return judgment


def judge_rows(
    client: Any, rows: Sequence[AuditRow], judge: str | None, max_tokens: int, evaluator: str | None = None
) -> list[dict[str, Any]]:
    pairs = [
        {"prompt": r.prompt, "response_a": r.response_a, "response_b": r.response_b, "id": r.id} for r in rows
    ]
    results = client.compare(pairs, judge=judge, max_tokens=max_tokens, evaluator=evaluator).results
    records = []
    for row, result in zip(rows, results, strict=True):
        shown = {o.order: o for o in result.orders}
        orders = {name: _judgment(row, result.status, shown.get(name)) for name in ORDERS}
        ab, ba = (orders[o]["verdict"] for o in ORDERS)
        records.append(
            {
                **asdict(row),
                "p_a_better": result.p_a_better,  # the service's mean of both orders: not audited
                "orders_agree": ab == ba if ab and ba else None,
                "orders": orders,
            }
        )
    return records


def alignment_item(row: Mapping[str, Any], rationale: str, verdict: str, order: str = "ab") -> dict[str, str]:
    """What the aligner reads for one judgment: the responses in the order the judge saw
    them, its rationale and verdict (by shown position), the gold rationale as reference."""
    first, second = (row["response_a"], row["response_b"])[:: 1 if order == "ab" else -1]
    shown = verdict if order == "ab" else {"A": "B", "B": "A"}[verdict]
    return {
        "prompt": f"{row['prompt']}\n\nResponse A:\n{first}\n\nResponse B:\n{second}",
        "response": f"{rationale.strip()}\nVerdict: {shown}",
        "reference": row["gold_rationale"] if order == "ab" else SWAPPED_NOTE + row["gold_rationale"],
    }


def align(client: Any, records: list[dict[str, Any]], aligner: str | None, threshold: float) -> None:
    """P(aligned) for every judgment with a verdict (label-wrong ones too, for the histogram)."""
    todo = []
    for record in records:
        for order in ORDERS:
            judgment = record["orders"][order]
            if judgment["verdict"] is None:  # no verdict: label-wrong, nothing to check
                continue
            if not (judgment["rationale"] or "").strip():  # names no reason: misaligned
                judgment.update(check="empty_rationale", alignment_p=None, aligned=False)
            else:
                todo.append((record, order, judgment))
    if not todo:
        return
    answer = client.rewards(
        [alignment_item(r, j["rationale"], j["verdict"], order) for r, order, j in todo],
        questions=[{"id": "aligned", "text": ALIGNMENT_QUESTION, "requires_reference": True}],
        evaluators=[{"name": aligner}] if aligner else None,
    )
    for (_, _, judgment), result in zip(todo, answer.results, strict=True):
        score = result.scores[0]
        if score.low_label_mass:  # the aligner did not answer yes/no: the check has no verdict
            judgment.update(check="parse_failure", alignment_p=None, aligned=None)
        else:
            judgment.update(check="ok", alignment_p=score.p_yes, aligned=score.p_yes >= threshold)


# ---------------------------------------------------------------- the run


def fingerprint(
    data: Path,
    judge: str | None,
    aligner: str | None,
    threshold: float,
    max_tokens: int,
    evaluator: str | None,
) -> str:
    h = hashlib.sha256(data.read_bytes())
    h.update(json.dumps([RECORD_FORMAT, judge, aligner, threshold, max_tokens, evaluator]).encode())
    return h.hexdigest()[:16]


def run_audit(
    client: Any,
    data: Path,
    output: Path,
    judge: str | None = None,
    aligner: str | None = None,
    threshold: float = 0.5,
    max_tokens: int = 128,
    chunk: int = 8,
    progress: Callable[[int, int], None] | None = None,
    evaluator: str | None = None,
) -> dict[str, Any]:
    """Audit `data` into `output`, resuming from `audit.partial.jsonl` if it is there.
    `evaluator`: the service evaluator the judge runs on (default: the default one)."""
    rows = read_rows(data)
    output.mkdir(parents=True, exist_ok=True)
    partial = output / "audit.partial.jsonl"
    key = fingerprint(data, judge, aligner, threshold, max_tokens, evaluator)
    done: dict[int, dict[str, Any]] = {}
    if partial.exists():
        lines = []
        for line in partial.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut off when the audit was interrupted: redo it
                break
        if lines and lines[0].get("fingerprint") != key:
            raise ValueError(
                f"{partial} belongs to another audit (other data, judge, aligner or threshold, or "
                "an older rlme's record format); delete it or choose another --output"
            )
        done = {r["index"]: r for r in lines[1:]}
    else:
        partial.write_text(json.dumps({"fingerprint": key}) + "\n")
    todo = [r for r in rows if r.index not in done]
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        records = judge_rows(client, part, judge, max_tokens, evaluator)
        align(client, records, aligner, threshold)
        with partial.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        done.update({r["index"]: r for r in records})
        if progress is not None:
            progress(len(done), len(rows))
    records = [done[r.index] for r in rows]
    report = {
        "data": str(data),
        "judge": judge or "pairwise",
        "evaluator": evaluator or "default",
        "aligner": aligner or "default",
        "threshold": threshold,
        "alignment_question": ALIGNMENT_QUESTION,
        "headline": "one judgment per row, response_a shown first (the R-Align authors' protocol)",
        **summary(records),
        "rows": records,
    }
    from rlme.trainer.audit_report import markdown, plot_audit

    _write_atomically(output / "audit.json", json.dumps(report, indent=2))
    _write_atomically(output / "audit.md", markdown(report))
    plot_audit(report, output / "audit.png")
    partial.unlink()
    return report


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
