"""The run's page (GET /runs/{run}): its alarm, signals, per-step plots and samples, as one
server-rendered HTML document with inline SVG — no scripts, no build step, nothing fetched.

Every caller text (prompts, responses, run ids) is HTML-escaped: the page shows a policy's
output, which is untrusted, and its Content-Security-Policy allows no scripts anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from html import escape

from rlme.client.wire.runs import RunReport, RunStep, Sample
from rlme.service.monitoring.signals import LEVELS, canary_p_yes, mean_p_yes

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
LEVEL_COLOURS = {"ok": "#2e7d32", "watch": "#ef6c00", "alarm": "#c62828"}
# One colour per series slot, the first the most visible (the browser test looks for it).
BLUE, ORANGE, GREEN, RED, PURPLE, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f"
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 460, 190, 44, 12, 12, 28

Series = tuple[str, str, list[tuple[float, float]]]  # label, colour, (step, value) points


def _scale(lo: float, hi: float, v: float, a: float, b: float) -> float:
    return a + (v - lo) / (hi - lo) * (b - a) if hi > lo else (a + b) / 2


def chart(title: str, series: Sequence[Series], y_range: tuple[float, float] | None = None) -> str:
    points = [p for _, _, pts in series for p in pts]
    body = [f'<figure><figcaption>{escape(title)}</figcaption><svg width="{W}" height="{H}" role="img">']
    body.append(f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" '
                'fill="#fafafa" stroke="#bbb"/>')  # fmt: skip
    if not points:
        body.append(
            f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#777">no data</text></svg></figure>'
        )
        return "".join(body)
    xs = [x for x, _ in points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = y_range or (min(y for _, y in points), max(y for _, y in points))
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5

    def xy(x: float, y: float) -> str:
        sx = _scale(x_lo, x_hi, x, PAD_L + 8, W - PAD_R - 8)
        sy = _scale(y_lo, y_hi, y, H - PAD_B, PAD_T)
        return f"{sx:.1f},{sy:.1f}"

    for frac in (0.0, 0.5, 1.0):  # y ticks
        y = y_lo + frac * (y_hi - y_lo)
        _, sy = xy(x_lo, y).split(",")
        body.append(
            f'<text x="{PAD_L - 4}" y="{float(sy) + 4}" text-anchor="end" font-size="10">{y:.3g}</text>'
        )
    for x in sorted({x_lo, x_hi, (x_lo + x_hi) // 2}):  # x ticks: steps
        sx, _ = xy(x, y_lo).split(",")
        body.append(f'<text x="{sx}" y="{H - PAD_B + 14}" text-anchor="middle" font-size="10">{x:g}</text>')
    for n, (label, colour, pts) in enumerate(series):
        if pts:
            coords = " ".join(xy(x, y) for x, y in pts)
            body.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
            body.extend(f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="3" fill="{colour}"/>'
                        for c in coords.split())  # fmt: skip
        body.append(f'<text x="{PAD_L + 6 + 150 * (n % 3)}" y="{H - 2}" font-size="10" fill="{colour}">'
                    f"■ {escape(label)}</text>")  # fmt: skip
    body.append("</svg></figure>")
    return "".join(body)


def _points(steps: Sequence[RunStep], value: Callable[[RunStep], float | None]) -> list[tuple[float, float]]:
    return [(float(s.step), float(v)) for s in steps if (v := value(s)) is not None]


def _alarm_level(step: RunStep) -> float | None:
    return None if step.alarm is None else float(LEVELS.index(step.alarm))


def _unanchored(step: RunStep) -> float | None:
    return None if step.anchor is None else step.anchor.p_yes_unanchored


def _anchored(step: RunStep) -> float | None:
    return None if step.anchor is None else step.anchor.p_yes_anchored


def _p50(step: RunStep) -> float | None:
    values = [q.p_yes_quantiles.get("p50") for q in step.questions.values()]
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def _label_mass(step: RunStep) -> float | None:
    values = [q.label_mass_mean for q in step.questions.values()]
    return sum(values) / len(values) if values else None


UNIT = (0.0, 1.0)
StepValue = Callable[[RunStep], float | None]
# Per plot: title, series (label, colour, value of a step), y range (None: the data's).
CHARTS: list[tuple[str, list[tuple[str, str, StepValue]], tuple[float, float] | None]] = [
    ("Alarm as of each step: 0 ok, 1 watch, 2 alarm", [("alarm", RED, _alarm_level)], (0, 2)),
    ("Mean reward", [("reward", BLUE, lambda s: s.reward_mean)], None),
    ("P(yes): responses and canaries", [
        ("responses", BLUE, mean_p_yes),
        ("canaries", RED, canary_p_yes),
        ("median (p50)", GREY, _p50),
    ], UNIT),
    ("The caller's rule: pass rate and AUC of P(yes)", [
        ("rule pass rate", BLUE, lambda s: s.rule_pass_rate),
        ("rule AUC", GREEN, lambda s: s.rule_auc),
    ], UNIT),
    ("Anchored items: P(yes) with and without the reference", [
        ("without", BLUE, _unanchored),
        ("with", PURPLE, _anchored),
    ], UNIT),
    ("Form: markdown share, repeated 3-grams", [
        ("markdown", BLUE, lambda s: s.markdown_share),
        ("repetition", ORANGE, lambda s: s.repetition_mean),
    ], UNIT),
    ("Response length (characters)", [("mean", BLUE, lambda s: s.response_chars_mean)], None),
    ("Label mass: P(yes) + P(no) over the vocabulary", [("mean", BLUE, _label_mass)], UNIT),
]  # fmt: skip


def charts(steps: Sequence[RunStep]) -> list[str]:
    return [
        chart(title, [(label, colour, _points(steps, value)) for label, colour, value in series], y_range)
        for title, series, y_range in CHARTS
    ]


def _samples(samples: Sequence[Sample]) -> str:
    if not samples:
        return "<p>No samples yet.</p>"
    rows = []
    for s in sorted(samples, key=lambda s: (s.kind != "top", -s.step, -(s.reward or 0))):
        reward = "" if s.reward is None else f"{s.reward:.3f}"
        texts = f"<td><pre>{escape(s.prompt)}</pre></td><td><pre>{escape(s.response)}</pre></td>"
        rows.append(
            f"<tr><td>{s.step}</td><td>{escape(s.kind)}</td><td>{reward}</td><td>{s.p_yes:.3f}</td>{texts}</tr>"
        )
    head = "<tr><th>step</th><th>kind</th><th>reward</th><th>P(yes)</th><th>prompt</th><th>response</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}figcaption{font-size:12px;font-weight:600}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
pre{margin:0;white-space:pre-wrap;max-width:520px;font-size:12px}"""


def render(report: RunReport) -> str:
    run = escape(report.run)
    colour = LEVEL_COLOURS[report.alarm]
    signal_rows = "".join(
        f'<tr><td>{escape(s.name)}</td><td><span class="badge" style="background:{LEVEL_COLOURS[s.level]}">'
        f"{s.level}</span></td><td>{escape(s.detail)}</td></tr>"
        for s in report.signals
    )
    steps = report.steps
    span = f"steps {steps[0].step}-{steps[-1].step}" if steps else "no steps"
    history = ""
    if report.first_alarm_step is not None:
        since = [s for s in steps if s.step >= report.first_alarm_step]
        raised = sum(s.alarm == "alarm" for s in since)
        badge = f'<span class="badge" style="background:{LEVEL_COLOURS["alarm"]}">alarm</span>'
        history = f"<p>{badge} first raised at step {report.first_alarm_step}, "
        history += f"and at {raised} of the {len(since)} steps since.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rlme run {run}</title><style>{STYLE}</style></head>
<body>
<h1>Run {run} <span class="badge" style="background:{colour}">{report.alarm}</span></h1>
<p>{len(steps)} {span}; {sum(s.items for s in steps)} responses scored.
Rendered {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}; the same data as JSON: /v1/runs/{run}.
What each signal can and cannot tell: docs/monitoring.md.</p>
{history}
<h2>Signals</h2>
<table><tr><th>signal</th><th>level</th><th>detail</th></tr>{signal_rows}</table>
<h2>Per step</h2>
<div class="grid">{"".join(charts(steps))}</div>
<h2>Samples of the last steps: the highest-rewarded responses and the canaries</h2>
{_samples(report.samples)}
</body></html>
"""
