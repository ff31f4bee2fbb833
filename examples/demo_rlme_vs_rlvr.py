"""CPU demo: RLME against the RLVR baseline on the same task, both curves in one figure.

    .venv/bin/python examples/demo_rlme_vs_rlvr.py          # ~15 min on 2 CPU cores

Starts `rlme serve` (the embedded SmolLM2-135M-Instruct as evaluator), then trains two
copies of the same policy side by side on the shipped capitals task ("What is the capital
of Peru? Answer in one sentence."): one rewarded by the evaluator's answer to "Is the
answer correct?" (RLME: the evaluator never sees the reference), one by a rule that checks
the reference city is named (RLVR). The rule is also the independent measure logged for
the RLME run (`rlvr/accuracy`). Writes runs/demo/*/metrics.jsonl and docs/rlme_vs_rlvr.png.
DEMO_STEPS overrides the number of steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import start_server  # noqa: E402

COMMON = {
    "data": "capitals", "group_size": 6, "prompts_per_step": 4, "max_new_tokens": 24,
    "temperature": 1.0, "lr": 3e-5, "mu": 2, "steps": int(os.environ.get("DEMO_STEPS", "12")),
    "save_final": False, "seed": 0,
}  # fmt: skip
RUNS = {
    "rlme": {"reward": "rlme", "rubric": "correctness"},
    "rlvr": {"reward": "rlvr"},
}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # three processes share two cores


def main() -> None:
    out = ROOT / "runs" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    with start_server(out, env=ONE_THREAD) as url:
        processes = {}
        for name, extra in RUNS.items():
            config = {**COMMON, **extra, "base_url": url, "output_dir": str(out / name)}
            path = out / f"{name}.json"
            path.write_text(json.dumps(config))
            command = [sys.executable, "-m", "rlme.trainer.grpo", "--config", str(path)]
            log = (out / f"{name}.log").open("w")
            processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env={**os.environ, **ONE_THREAD})  # fmt: skip
        for name, process in processes.items():
            if process.wait() != 0:
                raise SystemExit(f"{name} failed; see {out / name}.log")
    plot(out, ROOT / "docs" / "rlme_vs_rlvr.png")


def plot(out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in RUNS:
        history = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        steps = [h["step"] for h in history]
        axes[0].plot(steps, [h["reward/mean"] for h in history], marker=".", label=name)
        axes[1].plot(steps, [h["rlvr/accuracy"] for h in history], marker=".", label=name)
        if "p_yes/correct/mean" in history[0]:
            axes[2].plot(steps, [h["p_yes/correct/mean"] for h in history], marker=".", label=name)
    axes[0].set_title("training reward (each run's own)")
    axes[1].set_title("accuracy by rule (independent for RLME)")
    axes[2].set_title('evaluator p_yes "Is the answer correct?"')
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
