"""Service benchmarks, measured in one run on one machine, each against its own baseline.

    python bench/bench_service.py            # ~10 min on 2 CPU cores (make bench)

1. prefix sharing: 4 meta-questions per ~300-token item, shared prefix vs from scratch
   (in-process backend, same batches).                                      goal >= 2.5x
2. HTTP overhead: the same items through `rlme serve` over HTTP vs the backend called
   in process (tokenization included in both).                              goal >= 0.9x
3. dynamic batching: 64 concurrent single-item callers vs the same 64 calls one at a
   time, both over HTTP.                                                     goal >= 5x
4. against what users do today: one transformers forward per (item, question), batch 1,
   vs the service over HTTP on the same items and questions.                goal >= 1.5x
Also: bfloat16 vs float32 for the same in-process batches (no goal; a choice to make).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from workload import QUESTIONS, items  # noqa: E402

from rlme.client.wire import Item, MetaQuestion  # noqa: E402
from rlme.service.backends.base import (
    ScoringTask,  # noqa: E402
    build_task,  # noqa: E402
)
from rlme.service.backends.transformers_backend import TransformersBackend  # noqa: E402
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings  # noqa: E402

from support import start_server  # noqa: E402


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    """Fastest wall time of `repeats` runs after one warm-up (noise only ever adds time)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def tasks_for(
    backend: TransformersBackend, batch: list[dict[str, str]], questions: list[dict[str, str]]
) -> list[ScoringTask]:
    meta = [MetaQuestion(**q) for q in questions]
    return [build_task(backend.tokenizer, DEFAULT_SYSTEM_PROMPT, Item(**raw), meta) for raw in batch]


def post_rewards(url: str, batch: list[dict[str, str]], questions: list[dict[str, str]]) -> list[float]:
    answer = httpx.post(f"{url}/v1/rewards", json={"items": batch, "questions": questions}, timeout=600)
    answer.raise_for_status()
    return list(answer.json()["rewards"])


async def concurrent_singles(url: str, batch: list[dict[str, str]], questions: list[dict[str, str]]) -> None:
    limits = httpx.Limits(max_connections=len(batch))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/rewards", json={"items": [item], "questions": questions}) for item in batch)
        )
    for answer in answers:
        answer.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "service.json")
    args = parser.parse_args()

    settings = Settings.load()
    rows: list[dict[str, Any]] = []

    def row(
        name: str, baseline: str, base_s: float, ours: str, ours_s: float, evaluations: int, goal: float
    ) -> None:
        rows.append({
            "benchmark": name, "baseline": baseline, "baseline_eval_per_s": evaluations / base_s,
            "ours": ours, "ours_eval_per_s": evaluations / ours_s, "ratio": base_s / ours_s, "goal": goal,
        })  # fmt: skip
        print(f"{name}: {base_s / ours_s:.2f}x (goal {goal}x)", flush=True)

    # Both backends in float32 on the CPU: the service's default there.
    shared = TransformersBackend(EvaluatorConfig(dtype="float32"), settings.cache_dir)
    scratch = TransformersBackend(EvaluatorConfig(dtype="float32", prefix_sharing=False), settings.cache_dir)
    bf16 = TransformersBackend(EvaluatorConfig(dtype="bfloat16"), settings.cache_dir)
    for backend in (shared, scratch, bf16):
        backend.setup()

    # 1. prefix sharing, in process: 8 items x 4 questions of ~300 tokens, 4 items a batch.
    long_items = items(8, steps=6, seed=1)
    long_tasks = tasks_for(shared, long_items, QUESTIONS)
    batches = [long_tasks[i : i + 4] for i in range(0, len(long_tasks), 4)]
    t_scratch = best_of(args.repeats, lambda: [scratch.score(b) for b in batches])
    t_shared = best_of(args.repeats, lambda: [shared.score(b) for b in batches])
    row("prefix sharing (4 q x ~300 tok)", "from scratch", t_scratch, "shared prefix", t_shared, 32, 2.5)
    t_bf16 = best_of(args.repeats, lambda: [bf16.score(b) for b in batches])
    row("bfloat16 vs float32 (same batches)", "float32", t_shared, "bfloat16", t_bf16, 32, 0.0)

    # 4 (baseline half). What users do today: one forward per (item, question), batch 1.
    model = shared._model
    naive_inputs = [torch.tensor([s]) for t in tasks_for(shared, long_items, QUESTIONS) for s in t.sequences]

    def naive() -> None:
        with torch.inference_mode():
            for ids in naive_inputs:
                model(ids, logits_to_keep=1)

    t_naive = best_of(args.repeats, naive)

    # 2 (baseline half). In process: 64 items x 1 question (~200 tokens), one backend call.
    short_items = items(64, steps=2, seed=2)
    one_question = QUESTIONS[:1]
    t_inproc = best_of(args.repeats, lambda: shared.score(tasks_for(shared, short_items, one_question)))

    with start_server(Path(tempfile.mkdtemp(prefix="rlme-bench-"))) as url:  # log: server.log there
        t_http = best_of(args.repeats, lambda: post_rewards(url, short_items, one_question))
        row(
            "HTTP overhead (64 items, 1 request)",
            "backend in process",
            t_inproc,
            "HTTP service",
            t_http,
            64,
            0.9,
        )

        # 3. dynamic batching over HTTP: 64 single-item callers, one at a time vs all at once.
        singles = short_items
        t_serial = best_of(args.repeats, lambda: [post_rewards(url, [i], one_question) for i in singles])
        t_concurrent = best_of(
            args.repeats, lambda: asyncio.run(concurrent_singles(url, singles, one_question))
        )
        row(
            "dynamic batching (64 callers x 1 item)",
            "serial calls",
            t_serial,
            "64 concurrent",
            t_concurrent,
            64,
            5.0,
        )

        t_service = best_of(args.repeats, lambda: post_rewards(url, long_items, QUESTIONS))
        row(
            "vs per-item HF forward (8 x 4 q)",
            "HF forward per eval",
            t_naive,
            "HTTP service",
            t_service,
            32,
            1.5,
        )

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"\nSmolLM2-135M-Instruct, float32, {machine}; best of {args.repeats} after a warm-up\n")
    print("| benchmark | baseline (eval/s) | ours (eval/s) | ratio | goal |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['baseline']}: {r['baseline_eval_per_s']:.1f} | {r['ours']}: "
              f"{r['ours_eval_per_s']:.1f} | **{r['ratio']:.2f}x** | >= {r['goal']}x |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
