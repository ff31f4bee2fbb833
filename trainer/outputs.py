"""What a training run writes besides checkpoints: JSONL records and the reward-curve plot."""

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
