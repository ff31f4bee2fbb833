"""bfloat16 against float32 on the CPU: do rankings and rewards agree, and how much faster?

    python bench/bf16_agreement.py          # ~5 min on 2 CPU cores

The same evaluations scored by the transformers backend in float32 (the default) and in
bfloat16 (`dtype: bfloat16`, AVX512-BF16/AMX where the CPU has them):

1. Discrimination pairs: `bench/data/judge_dev.jsonl` (48 hand-written (prompt, good,
   bad, question) cases). A dtype is right on a case when P(yes | good) > P(yes | bad);
   agreement = the share of cases where both dtypes order the pair the same way.
2. Rewards: every response's log p_yes in both dtypes; the largest and mean absolute
   difference, the reward *difference* within each pair (what a GRPO advantage sees),
   and Spearman's rank correlation of all rewards.
3. Speed: the GRPO-shaped request of bench/bench_grpo_peers.py (96 evaluations), each
   dtype timed alternately, best of 3, with prefix sharing as the service runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from rlme.client.wire import Item, MetaQuestion
from rlme.service.backends.base import ScoringTask, build_task
from rlme.service.backends.transformers_backend import TransformersBackend
from rlme.service.reward_math import log_p_yes
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings

DATA = Path(__file__).parent / "data"


def backend(dtype: str) -> TransformersBackend:
    engine = TransformersBackend(EvaluatorConfig(dtype=dtype), Settings.load().cache_dir)
    engine.setup()
    return engine


def log_p(engine: TransformersBackend, tasks: list[ScoringTask]) -> list[float]:
    return [log_p_yes(s.logp_yes, s.logp_no) for r in engine.score(tasks) for s in r.scores]


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    for rank, i in enumerate(order):
        out[i] = float(rank)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    return statistics.correlation(ranks(a), ranks(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bf16.json")
    args = parser.parse_args()

    import bench_grpo_peers  # the GRPO-shaped workload

    cases = [json.loads(line) for line in (DATA / "judge_dev.jsonl").read_text().splitlines() if line]
    engines = {dtype: backend(dtype) for dtype in ("float32", "bfloat16")}
    tokenizer = engines["float32"].tokenizer

    def tasks_for(field: str) -> list[ScoringTask]:
        return [
            build_task(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(prompt=c["prompt"], response=c[field]),
                       [MetaQuestion(id="q", text=c["question"])])
            for c in cases
        ]  # fmt: skip

    good, bad = tasks_for("good"), tasks_for("bad")
    scores = {d: (log_p(e, good), log_p(e, bad)) for d, e in engines.items()}
    (g32, b32), (g16, b16) = scores["float32"], scores["bfloat16"]
    right = {d: sum(g > b for g, b in zip(*s, strict=True)) / len(cases) for d, s in scores.items()}
    same_order = sum((a > b) == (c > d) for a, b, c, d in zip(g32, b32, g16, b16, strict=True)) / len(cases)
    all32, all16 = g32 + b32, g16 + b16
    diffs = [abs(x - y) for x, y in zip(all32, all16, strict=True)]
    pair_diffs = [abs((a - b) - (c - d)) for a, b, c, d in zip(g32, b32, g16, b16, strict=True)]

    items = bench_grpo_peers.grpo_request(100)
    questions = [MetaQuestion(**q) for q in bench_grpo_peers.QUESTIONS]
    workload = [build_task(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(**i), questions) for i in items]
    best = dict.fromkeys(engines, math.inf)
    for _ in range(args.repeats + 1):  # the first round warms up
        for dtype, engine in engines.items():
            started = time.perf_counter()
            engine.score(workload)
            best[dtype] = min(best[dtype], time.perf_counter() - started)
    evaluations = sum(t.evaluations for t in workload)

    result: dict[str, Any] = {
        "cases": len(cases),
        "pairwise_accuracy": right,
        "same_pair_order": same_order,
        "log_p_yes_abs_diff": {"max": max(diffs), "mean": statistics.fmean(diffs)},
        "pair_difference_abs_diff": {"max": max(pair_diffs), "mean": statistics.fmean(pair_diffs)},
        "spearman_rewards": spearman(all32, all16),
        "grpo_request_eval_per_s": {d: evaluations / s for d, s in best.items()},
    }
    result["speedup"] = best["float32"] / best["bfloat16"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    main()
