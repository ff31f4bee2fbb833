"""The audit's report: `audit.md` (numbers, baselines, what they can and cannot say) and
`audit.png` (the headline and both orders with intervals; the aligner's probabilities).
The numbers themselves are computed in trainer/audit.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlme.trainer.audit import BASELINES, ORDERS, STATISTICS, judgments_of


def _fmt(value: float | None, interval: Sequence[float] | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _statistic(name: str) -> Callable[[dict[str, Any]], str]:
    """A table cell: the statistic `name` of a column with its interval."""
    return lambda column: _fmt(column[name], column[f"{name}_ci95"])


def markdown(report: dict[str, Any]) -> str:
    agreement = report["order_agreement"]
    columns = [
        report["overall"],
        report["both_orders"]["overall"],
        (report["orders_agree"] or {}).get("overall"),
    ]

    def line(title: str, cell: Callable[[dict[str, Any]], str]) -> str:
        return f"| {title} | " + " | ".join(cell(c) if c else "n/a" for c in columns) + " |"

    lines = [
        f"# Judge audit: `{report['judge']}` on `{report['evaluator']}` (aligner `{report['aligner']}`)",
        "",
        f"Data: `{report['data']}`, {agreement['rows']} rows. 95% bootstrap intervals (rows resampled) "
        "in brackets.",
        "",
        "| | A first (the authors' protocol) | both orders, 2 judgments per row "
        "| rows where both orders agree |",
        "|---|---|---|---|",
        line("judgments", lambda c: str(c["total"])),
        *(
            line(title, _statistic(name))
            for title, name in [
                ("label accuracy", "label_accuracy"),
                ("S-Corr (label-correct but misaligned)", "s_corr"),
                ("F-Score (aligned / total − check failures)", "f_score"),
            ]
        ),
        line("label accuracy of the written verdict", lambda c: _fmt(c["written_label_accuracy"])),
        line(
            "label-correct, aligned, misaligned",
            lambda c: f"{c['label_correct']}, {c['aligned']}, {c['misaligned']}",
        ),
        line(
            "judge call / parse failures",
            lambda c: f"{c['judge_call_failures']} / {c['judge_parse_failures']}",
        ),
        line(
            "check call / parse failures",
            lambda c: f"{c['check_call_failures']} / {c['check_parse_failures']}",
        ),
        "",
        f"The two orders agree on {agreement['agree']} of the {agreement['rows_with_both_verdicts']} rows "
        f"with a verdict in both (rate {_fmt(agreement['rate'])}).",
        "",
        "## Baselines: label accuracy on the same rows",
        "",
        "| rows | n | judge, A first | judge, both orders | " + " | ".join(BASELINES) + " |",
        "|---|---|---|---|" + "---|" * len(BASELINES),
    ]
    # n counts rows: the A-first headline has one judgment a row
    slices: list[tuple[str, int, Any, Any]] = [
        ("all", report["overall"]["total"], report["overall"], report["both_orders"]["overall"])
    ]
    slices += [
        (name, c["total"], c, report["both_orders"]["by_category"][name])
        for name, c in report["by_category"].items()
    ]
    if report["distractors"]:
        distractors = report["distractors"]
        slices.append(
            ("tempting distractors", distractors["total"], distractors, report["both_orders"]["distractors"])
        )
    for trap, numbers in (report.get("traps") or {}).items():  # reports before traps lack the key
        slices.append((f"trap: {trap}", numbers["total"], numbers, report["both_orders"]["traps"][trap]))
    if report["orders_agree"]:  # two judgments a row there, one verdict
        agreed = report["orders_agree"]["overall"]
        slices.append(("both orders agree", report["order_agreement"]["agree"], agreed, agreed))
    for name, n, headline, both in slices:
        base = " | ".join(_fmt(v) for v in headline["baselines"].values())
        lines.append(
            f"| {name} | {n} | {_fmt(headline['label_accuracy'])} | {_fmt(both['label_accuracy'])} | {base} |"
        )
    lines += [
        "",
        "A baseline that cannot choose (equal lengths; both or neither open with flattery) earns 1/2. "
        "On the rows where both orders agree, the judge's columns are its agreed verdict.",
        "",
        "## What these numbers can and cannot say",
        "",
        f"- Alignment is decided by the aligner evaluator `{report['aligner']}`: its P(yes) to "
        f'"{report["alignment_question"]}" with the gold rationale as reference, thresholded at '
        f"{report['threshold']}. S-Corr is only as good as that aligner; a weak aligner (the embedded "
        "135M model reads tone, not reasons) makes S-Corr noise. Check the histogram: an aligner that "
        "separates nothing gives the same distribution for label-correct and label-wrong judgments.",
        "- Each order is its own judgment: the rationale checked is the one that produced the verdict. "
        "A judge whose orders disagree follows the position, not the content.",
        "- A label accuracy that a baseline matches shows nothing; compare judges on the same rows only, "
        "and mind the intervals on a small set.",
        "- S-Corr ignores label-wrong judgments by definition; read it beside label accuracy.",
    ]
    return "\n".join(lines) + "\n"


def plot_audit(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for shift, (title, numbers) in enumerate(
        [("A first", report["overall"]), ("both orders", report["both_orders"]["overall"])]
    ):
        values = [numbers[n] if numbers[n] is not None else 0.0 for n in STATISTICS]
        intervals = [numbers[f"{n}_ci95"] or (v, v) for n, v in zip(STATISTICS, values, strict=True)]
        errors = [[v - i[0] for v, i in zip(values, intervals, strict=True)],
                  [i[1] - v for v, i in zip(values, intervals, strict=True)]]  # fmt: skip
        xs = [x + 0.4 * shift - 0.2 for x in range(len(STATISTICS))]
        left.bar(xs, values, width=0.4, yerr=errors, capsize=3, label=title, color=f"C{shift}")
    name, best = max(report["overall"]["baselines"].items(), key=lambda kv: kv[1] or 0.0)
    left.hlines(best, -0.45, 0.45, colors="k", linestyles=":", label=f"best baseline ({name})")
    left.set_xticks(range(len(STATISTICS)), ["label accuracy", "S-Corr", "F-Score"])
    left.set_ylim(0, 1)
    left.legend(fontsize=7)
    left.set_title(f"judge {report['judge']}: {report['order_agreement']['rows']} rows", fontsize=9)
    judged = judgments_of(report["rows"], ORDERS)
    correct = [j["alignment_p"] for j in judged if j["label_correct"] and j["alignment_p"] is not None]
    wrong = [j["alignment_p"] for j in judged if not j["label_correct"] and j["alignment_p"] is not None]
    bins = [i / 20 for i in range(21)]
    right.hist([correct, wrong], bins=bins, label=["label-correct", "label-wrong"], color=["C0", "C1"])
    right.axvline(report["threshold"], color="k", linestyle="--", linewidth=1)
    right.set_xlabel("aligner P(same reasons as the gold rationale), both orders")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
