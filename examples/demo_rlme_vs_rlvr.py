"""CPU demo: RLME against the RLVR baseline on the same task, both curves in one figure.

    .venv/bin/python examples/demo_rlme_vs_rlvr.py            # lists task, ~20 min on 2 CPU cores
    .venv/bin/python examples/demo_rlme_vs_rlvr.py capitals   # ~15 min: where RLME is reward-hacked
    .venv/bin/python examples/demo_rlme_vs_rlvr.py lists --url http://127.0.0.1:8000 --out /tmp/demo

Starts `rlme serve` on a free port (the embedded SmolLM2-135M-Instruct as evaluator), or
uses the service at `--url`, then trains two
copies of the same policy side by side: one rewarded by the evaluator's answer to a
meta-question (RLME: label-free, the evaluator never sees a rule or a reference), one by
the task's rule (RLVR). The rule is also the independent measure logged for the RLME run
(`rlvr/accuracy`). Tasks:

- `lists`: "Name three birds. Answer as a numbered list." Meta-question: "Is the response
  a numbered list of three items?" Rule: items 1., 2., 3. on their own lines.
- `capitals`: "What is the capital of Peru? Answer in one sentence." Meta-question: "Is
  the answer correct?" Rule: the reference city is named.

Then samples the initial and both final policies on held-out prompts (not trained on) and
prints the rule's pass rate and the RLME reward for each. Writes OUT/<task>/*/metrics.jsonl,
OUT/<task>/held_out.json and the figure OUT/<task>/rlme_vs_rlvr[_capitals].png (OUT:
`--out`, default runs/demo; the figures in docs/ are copies of such runs).
DEMO_STEPS overrides the number of steps (12).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import start_server  # noqa: E402

HELD_OUT_TOPICS = [
    "fish", "nuts", "car brands", "soups", "holidays", "cities in Africa", "woodworking tools",
    "things made of glass", "computer parts", "kinds of cake", "reptiles", "zoo animals",
    "things in a classroom", "berries", "winter sports", "pasta shapes", "famous scientists", "oceans",
    "kinds of shoes", "fabrics", "gemstones", "camping gear", "pets", "things in a fridge",
]  # fmt: skip
HELD_OUT_CAPITALS = {
    "Bolivia": "Sucre", "Ecuador": "Quito", "Uruguay": "Montevideo", "Jamaica": "Kingston",
    "Ghana": "Accra", "Ethiopia": "Addis Ababa", "Senegal": "Dakar", "Tunisia": "Tunis",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Croatia": "Zagreb", "Serbia": "Belgrade",
    "Iceland": "Reykjavik", "Nepal": "Kathmandu", "Malaysia": "Kuala Lumpur", "Mongolia": "Ulaanbaatar",
}  # fmt: skip
TASKS: dict[str, dict[str, Any]] = {
    "lists": {
        "common": {"data": "lists", "max_new_tokens": 40},
        "held_out": [{"prompt": f"Name three {t}. Answer as a numbered list."} for t in HELD_OUT_TOPICS],
        "question": {"id": "numbered_list", "text": "Is the response a numbered list of three items?"},
        "figure": "rlme_vs_rlvr.png",
    },
    "capitals": {
        "common": {"data": "capitals", "max_new_tokens": 24},
        "held_out": [
            {"prompt": f"What is the capital of {country}? Answer in one sentence.", "reference": city}
            for country, city in HELD_OUT_CAPITALS.items()
        ],
        "question": {"id": "correct", "text": "Is the answer correct?"},
        "figure": "rlme_vs_rlvr_capitals.png",
    },
}
COMMON: dict[str, Any] = {
    "group_size": 6, "prompts_per_step": 4, "temperature": 1.0, "lr": 3e-5, "mu": 2,
    "steps": int(os.environ.get("DEMO_STEPS", "12")), "save_final": True, "seed": 0,
}  # fmt: skip
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # three processes share two cores
EVAL_SAMPLES = 4  # responses per held-out prompt


def main(task: str, out_root: Path, url: str | None = None) -> None:
    spec = TASKS[task]
    runs: dict[str, dict[str, Any]] = {
        "rlme": {"reward": "rlme", "questions": [spec["question"]]},
        "rlvr": {"reward": "rlvr"},
    }
    out = out_root / task
    out.mkdir(parents=True, exist_ok=True)
    service = contextlib.nullcontext(url) if url else start_server(out, env=ONE_THREAD)
    with service as url:
        train_side_by_side(out, {
            name: {**COMMON, **spec["common"], **extra, "base_url": url, "output_dir": str(out / name)}
            for name, extra in runs.items()
        })  # fmt: skip
        final = f"checkpoints/step_{COMMON['steps']:06d}"
        policies = {"initial": "embedded", **{name: str(out / name / final) for name in runs}}
        table = evaluate(url, spec, policies, max_new_tokens=spec["common"]["max_new_tokens"])
    (out / "held_out.json").write_text(json.dumps(table, indent=2))
    print(f"held-out prompts ({len(spec['held_out'])} x {EVAL_SAMPLES} samples, not trained on):")
    print(f"{'policy':8s} {'rule pass rate':>15s} {'RLME reward':>12s} {'p_yes':>6s} {'tokens':>7s}")
    for name, row in table.items():
        print(f"{name:8s} {row['rule']:15.3f} {row['reward']:12.3f} {row['p_yes']:6.3f} {row['tokens']:7.1f}")
    plot(out, out / spec["figure"], table)
    print(f"figure: {out / spec['figure']}")


def train_side_by_side(out: Path, configs: dict[str, dict[str, Any]]) -> None:
    """One GRPO trainer process per config, all at once (OUT/<name>.json, OUT/<name>.log)."""
    processes = {}
    for name, config in configs.items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(config))
        command = [sys.executable, "-m", "rlme.trainer.grpo", "--config", str(path)]
        log = (out / f"{name}.log").open("w")
        processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **ONE_THREAD})  # fmt: skip
    for name, process in processes.items():
        if process.wait() != 0:
            raise SystemExit(f"{name} failed; see {out / name}.log")


def evaluate(url: str, spec: dict[str, Any], policies: dict[str, str], max_new_tokens: int) -> dict[str, Any]:
    """Each policy on the held-out prompts: the rule's pass rate, and the RLME reward and p_yes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlme.client import RewardClient
    from rlme.service.model_store import resolve_model
    from rlme.service.settings import Settings
    from rlme.trainer.common import sample_groups
    from rlme.trainer.grpo import TrainConfig
    from rlme.trainer.rewards import resolve_rule
    from rlme.trainer.rules import RULES

    rows = spec["held_out"]
    cfg = TrainConfig(data=spec["common"]["data"], group_size=EVAL_SAMPLES, max_new_tokens=max_new_tokens)
    rule = RULES[str(resolve_rule(cfg, rows))]
    table = {}
    with RewardClient(base_url=url) as client:
        for name, path in policies.items():
            path = resolve_model(path, Settings.load().cache_dir) if path == "embedded" else path
            tokenizer = AutoTokenizer.from_pretrained(path)
            tokenizer.padding_side = "left"
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            torch.manual_seed(0)  # every policy gets the same sampling noise
            rollout = sample_groups(model, tokenizer, [r["prompt"] for r in rows], cfg)
            texts = rollout.texts
            expanded = [r for r in rows for _ in range(EVAL_SAMPLES)]
            items = [{"prompt": r["prompt"], "response": y} for r, y in zip(expanded, texts, strict=True)]
            answer = client.rewards(items, questions=[spec["question"]])
            table[name] = {
                "rule": sum(rule(y, r.get("reference")) for r, y in zip(expanded, texts, strict=True))
                / len(texts),
                "reward": sum(answer.rewards) / len(texts),
                "tokens": float(rollout.response_mask.sum(1).float().mean()),
                "p_yes": sum(res.scores[0].p_yes for res in answer.results) / len(texts),
                "responses": texts,
            }
    return table


def plot(out: Path, path: Path, table: dict[str, Any]) -> None:
    """Training curves of both runs (rewards on their own axes), and the held-out comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colours = {"initial": "tab:gray", "rlme": "tab:blue", "rlvr": "tab:orange"}
    reward_axes = {"rlme": axes[0], "rlvr": axes[0].twinx()}
    for name in ("rlme", "rlvr"):
        history = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        steps = [h["step"] for h in history]
        ax = reward_axes[name]
        ax.plot(steps, [h["reward/mean"] for h in history], marker=".", color=colours[name], label=name)
        ax.set_ylabel(f"{name} reward", color=colours[name])
        axes[1].plot(
            steps, [h["rlvr/accuracy"] for h in history], marker=".", color=colours[name], label=name
        )
    axes[0].set_title("training reward (rlme: Σ log P(yes); rlvr: rule)", fontsize=10)
    axes[1].set_title("rule pass rate during training (independent for rlme)", fontsize=10)
    axes[1].set_ylim(0, 1.05)
    axes[1].legend()
    for ax in axes[:2]:
        ax.set_xlabel("step")
    names = list(table)
    measures = {"rule pass rate": "rule", "evaluator P(yes)": "p_yes"}
    for i, name in enumerate(names):
        heights = [table[name][key] for key in measures.values()]
        bars = axes[2].bar([j + 0.27 * (i - 1) for j in range(len(measures))], heights, width=0.27,
                           color=colours[name], label=name)  # fmt: skip
        axes[2].bar_label(bars, fmt="%.2f", fontsize=8)
    axes[2].set_xticks(range(len(measures)), list(measures))
    axes[2].set_ylim(0, 1.1)
    axes[2].set_title("held-out prompts: initial policy vs after 12 steps", fontsize=10)
    axes[2].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", nargs="?", default="lists", choices=sorted(TASKS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo", help="output folder")
    parser.add_argument("--url", help="a running rlme service to use instead of starting one")
    args = parser.parse_args()
    main(args.task, args.out, args.url)
