"""The S-Corr audit: is a judge right for the right reasons? (R-Align, arXiv 2602.06763)

`rlme audit --data FILE --judge NAME [--aligner NAME] --output DIR`. For each row of a
JSONL file of {prompt, response_a, response_b, label: "A"|"B", gold_rationale,
[id], [category]}:

1. the judge compares the two responses through POST /v1/comparisons (both orders; the
   verdict is A when the mean P(A better) is above 0.5, B below);
2. an *aligner* evaluator reads the judge's rationale (from the order that shows A
   first, so "A" and "B" mean what they mean in the gold rationale) beside the gold
   rationale and answers RLME's meta-question ALIGNMENT_QUESTION through POST
   /v1/rewards; P(yes) >= `threshold` counts as aligned (the probability is kept). A
   label-correct verdict with an empty rationale names no reason: misaligned, without
   asking the aligner (a weak aligner says "Yes" to nothing at all).

Definitions, as in the R-Align authors' evaluation code:
- label accuracy = label-correct / total;
- the rationale check counts only on label-correct rows;
- S-Corr  = 1 − aligned / (aligned + misaligned)  over label-correct rows with a check;
- F-Score = aligned / (total − call failures − parse failures).
A call failure is a judge comparison or an alignment check the service could not make
(masked: timeout, error; or an aligner that did not answer yes/no: low label mass); a
parse failure is a judge verdict that cannot be read (the
labels got no probability mass, or exactly 0.5). Bootstrap 95% intervals resample rows.

Rows are audited in chunks; each finished chunk is appended to `audit.partial.jsonl`, so
an interrupted audit resumes without redoing them. `audit.json`, `audit.md` and
`audit.png` are written only when every row is done.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ALIGNMENT_QUESTION = (
    "Does the evaluation reach its verdict for the same reasons as the reference evaluation, "
    "naming the same decisive factor?"
)
FIELDS = ("prompt", "response_a", "response_b", "label", "gold_rationale")


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
        rows.append(
            AuditRow(
                index=len(rows),
                id=str(raw.get("id", number)),
                category=str(raw.get("category", "all")),
                distractor=bool(raw.get("distractor", False)),
                **{f: raw[f] for f in FIELDS},
            )
        )
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


# ---------------------------------------------------------------- the numbers, pure


def audit_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts, label accuracy, S-Corr and F-Score of audited rows (see the module docstring)."""
    total = len(records)
    call_failures = sum(r["status"] == "call_failure" for r in records)
    parse_failures = sum(r["status"] == "parse_failure" for r in records)
    correct = [r for r in records if r["label_correct"]]
    aligned = sum(r["aligned"] is True for r in correct)
    misaligned = sum(r["aligned"] is False for r in correct)
    checked = aligned + misaligned
    valid = total - call_failures - parse_failures
    return {
        "total": total,
        "call_failures": call_failures,
        "parse_failures": parse_failures,
        "label_correct": len(correct),
        "aligned": aligned,
        "misaligned": misaligned,
        "label_accuracy": len(correct) / total if total else None,
        "s_corr": 1 - aligned / checked if checked else None,
        "f_score": aligned / valid if valid else None,
    }


def bootstrap(
    records: Sequence[dict[str, Any]], statistic: str, rounds: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95% percentile interval of `statistic` over row resamples; None if never defined."""
    rng = random.Random(seed)
    values = []
    for _ in range(rounds):
        value = audit_metrics(rng.choices(records, k=len(records)))[statistic]
        if value is not None:
            values.append(value)
    if not values:
        return None
    values.sort()
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def summary(records: Sequence[dict[str, Any]], rounds: int = 1000) -> dict[str, Any]:
    def with_intervals(part: Sequence[dict[str, Any]]) -> dict[str, Any]:
        numbers = audit_metrics(part)
        for name in ("label_accuracy", "s_corr", "f_score"):
            numbers[f"{name}_ci95"] = bootstrap(part, name, rounds)
        return numbers

    categories = sorted({r["category"] for r in records})
    by_category = {c: with_intervals([r for r in records if r["category"] == c]) for c in categories}
    tempting = [r for r in records if r.get("distractor")]
    return {
        "overall": with_intervals(records),
        "by_category": by_category if len(categories) > 1 else {},
        "distractors": with_intervals(tempting) if tempting else None,
    }


# ---------------------------------------------------------------- asking the service


def judge_rows(
    client: Any, rows: Sequence[AuditRow], judge: str | None, max_tokens: int, evaluator: str | None = None
) -> list[dict[str, Any]]:
    pairs = [
        {"prompt": r.prompt, "response_a": r.response_a, "response_b": r.response_b, "id": r.id} for r in rows
    ]
    results = client.compare(pairs, judge=judge, max_tokens=max_tokens, evaluator=evaluator).results
    records = []
    for row, result in zip(rows, results, strict=True):
        record: dict[str, Any] = {
            **asdict(row),
            "p_a_better": result.p_a_better,
            "orders_agree": result.orders_agree,
        }
        shown = next((o for o in result.orders if o.order == "ab"), None)
        usable = [j for j in (shown.judgments if shown else []) if j.status != "low_label_mass"]
        record["rationale"] = usable[0].rationale if usable else None
        p = result.p_a_better
        if result.status in ("timeout", "error"):
            record.update(status="call_failure", verdict=None, label_correct=False)
        elif p is None or p == 0.5 or record["rationale"] is None:
            record.update(status="parse_failure", verdict=None, label_correct=False)
        else:
            verdict = "A" if p > 0.5 else "B"
            record.update(status="ok", verdict=verdict, label_correct=verdict == row.label)
        records.append(record)
    return records


def align(client: Any, records: list[dict[str, Any]], aligner: str | None, threshold: float) -> None:
    """P(aligned) for every record with a verdict (label-wrong ones too, for the histogram)."""
    todo = []
    for record in records:
        if record["status"] != "ok":
            continue
        if not record["rationale"].strip():  # names no reason: misaligned, nothing to ask
            record.update(alignment_p=None, aligned=False)
        else:
            todo.append(record)
    if not todo:
        return
    items = [
        {
            "prompt": f"{r['prompt']}\n\nResponse A:\n{r['response_a']}\n\nResponse B:\n{r['response_b']}",
            "response": f"{r['rationale'].strip()}\nVerdict: {r['verdict']}",
            "reference": r["gold_rationale"],
        }
        for r in todo
    ]
    answer = client.rewards(
        items,
        questions=[{"id": "aligned", "text": ALIGNMENT_QUESTION, "requires_reference": True}],
        evaluators=[{"name": aligner}] if aligner else None,
    )
    for record, result in zip(todo, answer.results, strict=True):
        score = result.scores[0]
        if score.low_label_mass:  # the aligner did not answer yes/no: a failed check, not a number
            record.update(status="call_failure", alignment_p=None, aligned=None)
            continue
        record["alignment_p"] = score.p_yes
        record["aligned"] = score.p_yes >= threshold


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
    # Audits of the default evaluator keep the fingerprint they had before `evaluator` existed.
    h.update(
        json.dumps([judge, aligner, threshold, max_tokens, *([evaluator] if evaluator else [])]).encode()
    )
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
                f"{partial} belongs to another audit (other data, judge, aligner or threshold); "
                "delete it or choose another --output"
            )
        done = {r["index"]: r for r in lines[1:]}
    else:
        partial.write_text(json.dumps({"fingerprint": key}) + "\n")
    todo = [r for r in rows if r.index not in done]
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        records = judge_rows(client, part, judge, max_tokens, evaluator)
        for record in records:
            record.setdefault("alignment_p", None)
            record.setdefault("aligned", None)
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
        **summary(records),
        "rows": records,
    }
    _write_atomically(output / "audit.json", json.dumps(report, indent=2))
    _write_atomically(output / "audit.md", markdown(report))
    plot_audit(report, output / "audit.png")
    partial.unlink()
    return report


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _fmt(value: float | None, interval: Sequence[float] | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def markdown(report: dict[str, Any]) -> str:
    o = report["overall"]
    lines = [
        f"# Judge audit: `{report['judge']}` on `{report.get('evaluator', 'default')}` "
        f"(aligner `{report['aligner']}`)",
        "",
        f"Data: `{report['data']}`, {o['total']} rows. 95% bootstrap intervals in brackets.",
        "",
        "| | value |",
        "|---|---|",
        f"| label accuracy | {_fmt(o['label_accuracy'], o['label_accuracy_ci95'])} |",
        f"| S-Corr (label-correct but misaligned) | {_fmt(o['s_corr'], o['s_corr_ci95'])} |",
        f"| F-Score (aligned / valid) | {_fmt(o['f_score'], o['f_score_ci95'])} |",
        f"| label-correct, aligned, misaligned | {o['label_correct']}, {o['aligned']}, {o['misaligned']} |",
        f"| call failures / parse failures | {o['call_failures']} / {o['parse_failures']} |",
    ]
    if report["by_category"]:
        lines += ["", "| category | rows | label accuracy | S-Corr | F-Score |", "|---|---|---|---|---|"]
        for name, c in report["by_category"].items():
            numbers = " | ".join(_fmt(c[k]) for k in ("label_accuracy", "s_corr", "f_score"))
            lines.append(f"| {name} | {c['total']} | {numbers} |")
    if report.get("distractors"):
        d = report["distractors"]
        numbers = " | ".join(_fmt(d[k]) for k in ("label_accuracy", "s_corr", "f_score"))
        lines += [
            "",
            "| tempting distractors only | rows | label accuracy | S-Corr | F-Score |",
            "|---|---|---|---|---|",
        ]
        lines.append(f"| | {d['total']} | {numbers} |")
    lines += [
        "",
        "## What these numbers can and cannot say",
        "",
        f"- Alignment is decided by the aligner evaluator `{report['aligner']}`: its P(yes) to "
        f'"{report["alignment_question"]}" with the gold rationale as reference, thresholded at '
        f"{report['threshold']}. S-Corr is only as good as that aligner; a weak aligner (the embedded "
        "135M model reads tone, not reasons) makes S-Corr noise. Check the histogram: an aligner that "
        "separates nothing gives the same distribution for label-correct and label-wrong decisions.",
        "- The rationale checked is the one the judge wrote with response A shown first.",
        "- Label accuracy on a small set has a wide interval; compare judges on the same rows only.",
        "- S-Corr ignores label-wrong decisions by definition; read it beside label accuracy.",
    ]
    return "\n".join(lines) + "\n"


def plot_audit(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o = report["overall"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = ["label_accuracy", "s_corr", "f_score"]
    values = [o[n] if o[n] is not None else 0.0 for n in names]
    errors = [
        [v - (o[f"{n}_ci95"] or (v, v))[0] for n, v in zip(names, values, strict=True)],
        [(o[f"{n}_ci95"] or (v, v))[1] - v for n, v in zip(names, values, strict=True)],
    ]
    left.bar(
        ["label accuracy", "S-Corr", "F-Score"], values, yerr=errors, capsize=4, color=["C0", "C3", "C2"]
    )
    left.set_ylim(0, 1)
    left.set_title(f"judge {report['judge']}: {o['total']} rows", fontsize=9)
    rows = report["rows"]
    correct = [r["alignment_p"] for r in rows if r["label_correct"] and r["alignment_p"] is not None]
    wrong = [r["alignment_p"] for r in rows if not r["label_correct"] and r["alignment_p"] is not None]
    bins = [i / 20 for i in range(21)]
    right.hist([correct, wrong], bins=bins, label=["label-correct", "label-wrong"], color=["C0", "C1"])
    right.axvline(report["threshold"], color="k", linestyle="--", linewidth=1)
    right.set_xlabel("aligner P(same reasons as the gold rationale)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
