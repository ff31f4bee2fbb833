"""CPU demo: the run monitor watching two RLME runs, one reward-hacked and one not.

    .venv/bin/python examples/demo_monitoring.py                 # ~20 min on 2 CPU cores
    .venv/bin/python examples/demo_monitoring.py --out /tmp/mon  # figures and reports there

Starts `rlme serve` (the embedded SmolLM2-135M-Instruct as evaluator; canaries for a
quarter of the responses, the run monitor's SQLite file in OUT) and trains two RLME runs
beside each other, the same configs as examples/demo_rlme_vs_rlvr.py:

- `capitals` ("Is the answer correct?"): reward-hacked — the reward rises while the
  rule's accuracy falls. A quarter of its prompt groups are anchored (the evaluator sees
  the reference city), so the monitor can score them again without it.
- `lists` ("Is the response a numbered list of three items?"): the rule confirms the
  reward.

The trainer tags every reward request with its run id and step and each item with its
rule check (`rule_score`), and logs the service's alarm per step (`monitor/alarm`). Writes
OUT/<task>/metrics.jsonl, OUT/<task>_report.json (GET /v1/runs/{run}), OUT/runs.sqlite,
the figure OUT/monitoring_demo.png and, with Debian's chromium, the runs' pages as
OUT/run_page_<task>.png; prints, per run, the step at which the alarm was first
raised and the step at which the rule's accuracy fell below half its start.
DEMO_STEPS overrides the number of steps (12); MONITOR_WINDOW the window (2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from demo_rlme_vs_rlvr import COMMON, ONE_THREAD, ROOT, TASKS, train_side_by_side  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from support import start_server  # noqa: E402

RUNS = {"capitals": {"anchor_fraction": 0.25}, "lists": {}}
LEVEL = {0.0: "ok", 1.0: "watch", 2.0: "alarm"}


def service_env(out: Path) -> dict[str, str]:
    return {
        **ONE_THREAD,
        "RLME_MONITORING__DB_PATH": str(out / "runs.sqlite"),
        "RLME_MONITORING__CANARY_RATE": "0.25",
        "RLME_MONITORING__ANCHOR_RATE": "1.0",
        "RLME_MONITORING__WINDOW": os.environ.get("MONITOR_WINDOW", "2"),
    }


def main(out: Path, url: str | None, tasks: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    service = contextlib.nullcontext(url) if url else start_server(out, env=service_env(out))
    with service as url:
        train_side_by_side(out, {
            task: {**COMMON, **spec["common"], "reward": "rlme", "questions": [spec["question"]],
                   **RUNS[task], "base_url": url, "output_dir": str(out / task), "run": f"demo-{task}"}
            for task in tasks
            for spec in [TASKS[task]]
        })  # fmt: skip
        reports = {}
        for task in tasks:
            reports[task] = httpx.get(f"{url}/v1/runs/demo-{task}", timeout=30).json()
            (out / f"{task}_report.json").write_text(json.dumps(reports[task], indent=1))
            screenshot(f"{url}/runs/demo-{task}", out / f"run_page_{task}.png")
    for task in tasks:
        summarise(task, out, reports[task])
    plot(out, reports)


def screenshot(page: str, path: Path) -> None:
    """The run's page as a headless Chromium shows it (skipped without Debian's chromium)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print(f"no chromium: open {page} yourself")
        return
    with tempfile.TemporaryDirectory() as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--window-size=1000,1500", f"--user-data-dir={profile}",
                   f"--screenshot={path}", page]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    print(f"page: {path}")


def history(out: Path, task: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / task / "metrics.jsonl").read_text().splitlines()]


def summarise(task: str, out: Path, report: dict[str, Any]) -> None:
    """Per step: the rule's accuracy, the reward, the alarm the trainer got back."""
    rows = history(out, task)
    start = rows[0]["rlvr/accuracy"]
    fell = next((r["step"] for r in rows if r["rlvr/accuracy"] < start / 2), None)
    raised = next((r["step"] for r in rows if r.get("monitor/alarm", 0) >= 2), None)
    print(f"\n{task}: rule accuracy at step 1 {start:.2f}; below half of it from step {fell}; "
          f"alarm first raised at step {raised}; final alarm {report['alarm']}")  # fmt: skip
    print(f"{'step':>4} {'rule acc':>8} {'reward':>7} {'alarm':>6}")
    for r in rows:
        level = LEVEL.get(r.get("monitor/alarm", -1.0), "-")
        print(f"{r['step']:4d} {r['rlvr/accuracy']:8.2f} {r['reward/mean']:7.3f} {level:>6}")
    for signal in report["signals"]:
        print(f"  {signal['name']:18s} {signal['level']:6s} {signal['detail']}")
    for window in (1, 2, 3):
        print(f"  alarm per step replayed with window {window}: {' '.join(replay(report, window))}")


def replay(report: dict[str, Any], window: int) -> list[str]:
    """The alarm each step would have had with another window, from the stored steps (the
    signals are pure functions; a step's probes count as if scored before the next step)."""
    from rlme.client.wire.runs import RunStep
    from rlme.service.monitoring.signals import Thresholds, run_alarm, signals

    steps = [RunStep(**s) for s in report["steps"]]
    return [run_alarm(signals(steps[: k + 1], Thresholds(window=window))) for k in range(len(steps))]


def plot(out: Path, reports: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlme.client.wire.runs import RunStep
    from rlme.service.monitoring.signals import canary_p_yes, mean_p_yes

    fig, axes = plt.subplots(2, len(reports), figsize=(6.5 * len(reports), 7), squeeze=False)
    for col, (task, report) in enumerate(reports.items()):
        rows = history(out, task)
        steps = [RunStep(**s) for s in report["steps"]]
        x = [s.step for s in steps]
        top, bottom = axes[0][col], axes[1][col]
        top.plot([r["step"] for r in rows], [r["rlvr/accuracy"] for r in rows], "o-", color="tab:green",
                 label="rule accuracy (the trainer's check)")  # fmt: skip
        top.plot(x, [mean_p_yes(s) for s in steps], "o-", color="tab:blue", label="mean P(yes), responses")
        canary = [(s.step, p) for s in steps if (p := canary_p_yes(s)) is not None]
        top.plot(*zip(*canary, strict=True), "s--", color="tab:red", label="mean P(yes), canaries")
        anchored = [s for s in steps if s.anchor is not None]
        if anchored:
            top.plot([s.step for s in anchored], [s.anchor.p_yes_unanchored for s in anchored], "^:",
                     color="tab:purple", label="anchored items without their reference")  # fmt: skip
            top.plot([s.step for s in anchored], [s.anchor.p_yes_anchored for s in anchored], "v:",
                     color="tab:gray", label="... with it")  # fmt: skip
        top.set_ylim(0, 1.05)
        top.set_title(f"{task}: RLME run, monitored", fontsize=10)
        top.legend(fontsize=7, loc="lower left")
        bottom.plot(x, [s.markdown_share for s in steps], "o-", color="tab:orange", label="markdown share")
        first_len = steps[0].response_chars_mean or 1.0
        bottom.plot(x, [s.response_chars_mean / first_len / 2 for s in steps], "o-", color="tab:brown",
                    label="response length / step-1 length / 2")  # fmt: skip
        auc = [(s.step, s.rule_auc) for s in steps if s.rule_auc is not None]
        if auc:
            bottom.plot(*zip(*auc, strict=True), "d-", color="tab:cyan", label="rule AUC of P(yes)")
        alarms = [(r["step"], r["monitor/alarm"] / 2) for r in rows if "monitor/alarm" in r]
        bottom.step(*zip(*alarms, strict=True), where="mid", color="black", lw=2,
                    label="alarm (0 ok, 0.5 watch, 1 alarm)")  # fmt: skip
        bottom.set_ylim(-0.05, 1.1)
        bottom.set_xlabel("step")
        bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = out / "monitoring_demo.png"
    fig.savefig(path, dpi=100)
    print(f"figure: {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "monitoring", help="output folder")
    parser.add_argument("--url", help="a running rlme service to use (configure its monitoring yourself)")
    parser.add_argument("--tasks", nargs="+", default=list(RUNS), choices=list(RUNS), help="runs to train")
    args = parser.parse_args()
    main(args.out, args.url, args.tasks)
