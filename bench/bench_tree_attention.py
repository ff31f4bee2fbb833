"""Tree attention against the dense tree mask, in process, on the GRPO workloads (issue 24).

    python bench/bench_tree_attention.py            # ~6 min on 2 CPU cores

The transformers backend twice, the same packed rows, interleaved in every repeat, best of
N after a warm-up: `tree_attention: dense` (SDPA with the dense (L x L) tree mask, the
packing shipped before) and `tree_attention: flex` (per row: block-sparse flex attention, or
the causal trunk + dense tail; service/backends/tree_attention.py). Workloads as
bench_grpo_peers.py (short, prompt1000, long). Reported: eval/s, the ratio, the share of
rows on each plan, the rows' block density, and the machine's float32 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from measure import matmul_peak  # noqa: E402
from workload import GRPO_QUESTIONS, WORKLOADS  # noqa: E402

from rlme.client.wire import Item, MetaQuestion  # noqa: E402
from rlme.service.backends.base import build_task  # noqa: E402
from rlme.service.backends.prefix_tree import pack  # noqa: E402
from rlme.service.backends.transformers_backend import TransformersBackend  # noqa: E402
from rlme.service.backends.tree_attention import density  # noqa: E402
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tree_attention.json")
    args = parser.parse_args()
    backends = {}
    for mode in ("dense", "flex"):
        backends[mode] = TransformersBackend(
            EvaluatorConfig(dtype="float32", tree_attention=mode), Settings.load().cache_dir
        )
        backends[mode].setup()
    tree = backends["flex"]._tree
    assert tree is not None and tree.kernel is not None, "flex attention did not compile here"
    peak = matmul_peak()
    questions = [MetaQuestion(**q) for q in GRPO_QUESTIONS]
    report: dict[str, Any] = {"matmul_peak_gflops": peak / 1e9, "workloads": {}}
    print(f"float32 matmul peak {peak / 1e9:.0f} GFLOP/s; best of {args.repeats}")
    print(
        "| workload | rows (flex / trunk) | block density | dense mask eval/s | tree attention eval/s "
        "| ratio |"
    )
    print("|---|---|---|---|---|---|")
    for workload in args.workloads:
        tokenizer = backends["dense"].tokenizer
        tasks = [
            build_task(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(**i), questions) for i in WORKLOADS[workload]()
        ]
        rows = pack([s for t in tasks for s in t.sequences], backends["flex"].max_forward_tokens)
        plans = tree.plans(rows, max(len(r.tokens) for r in rows))
        flex_rows = sum(p.flex is not None for p in plans)
        best = dict.fromkeys(backends, float("inf"))
        for attempt in range(args.repeats + 1):
            for mode, backend in backends.items():
                started = time.perf_counter()
                backend.score(tasks)
                if attempt:
                    best[mode] = min(best[mode], time.perf_counter() - started)
        n = sum(t.evaluations for t in tasks)
        row = {
            "evaluations": n,
            "rows": len(rows),
            "flex_rows": flex_rows,
            "block_density": density(rows),
            "dense_eval_per_s": n / best["dense"],
            "tree_eval_per_s": n / best["flex"],
            "ratio": best["dense"] / best["flex"],
        }
        report["workloads"][workload] = row
        print(
            f"| {workload} | {len(rows)} ({flex_rows} / {len(rows) - flex_rows}) | "
            f"{row['block_density']:.2f} | "
            f"{row['dense_eval_per_s']:.2f} | {row['tree_eval_per_s']:.2f} | **{row['ratio']:.2f}x** |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
