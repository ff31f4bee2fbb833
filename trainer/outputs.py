"""What a training run writes besides checkpoints: its config copy, JSONL records (resumable),
TensorBoard, the GRPO reward curves and the Meta-Rewarding per-iteration figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def write_jsonl(path: Path, records: list[dict[str, Any]], mode: str = "w") -> None:
    with path.open(mode) as f:
        f.writelines(json.dumps(record) + "\n" for record in records)


def plot_rewards(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["reward/mean", "rlvr/accuracy"]
    names += sorted({k for h in history for k in h if k.startswith("p_yes/")})
    names = [n for n in names if any(n in h for h in history)]
    fig, axes = plt.subplots(len(names), 1, sharex=True, figsize=(7, 2.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        points = [(h["step"], h[name]) for h in history if name in h]
        ax.plot(*zip(*points, strict=True), marker=".")
        ax.set_ylabel(name, fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_iterations(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("judge's score distribution", [f"judge/score_{k}" for k in range(1, 6)]),
        ("response length (chars)", ["response/chars_mean", "eval/response_chars"]),
        ("pairs", ["pairs/actor", "pairs/judge"]),
        ("DPO", ["dpo/margin", "dpo/accuracy"]),
        ("independent measure", ["eval/win_rate_vs_initial", "eval/rule_accuracy"]),
    ]
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(7, 2.2 * len(panels)))
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            points = [(h["iteration"], h[name]) for h in history if name in h]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def open_run(out: Path, config: dict[str, Any], start: int, files: tuple[str, ...], key: str) -> Any:
    """Start (or resume at `start`) a run's files in `out`: config.json; each JSONL in `files`
    keeps its records before `start` (by `key`: a resumed run redoes later steps, a new one
    all); returns (the metrics history so far, a TensorBoard writer purged from `start`)."""
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in files:
        write_jsonl(out / name, [r for r in read_jsonl(out / name) if r[key] < start])
    return read_jsonl(out / "metrics.jsonl"), SummaryWriter(str(out / "tb"), purge_step=start)
