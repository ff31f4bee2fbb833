"""GRPO-shaped reward requests against the peers a user would pick, in one run.

    python bench/bench_grpo_peers.py       # ~40 min on 2 CPU cores; needs vLLM (make bench-peers)
    python bench/bench_grpo_peers.py --systems defgh --repeats 1   # no padded baseline: ~30 min

Workloads (deterministic; 3 meta-questions each, float32, SmolLM2-135M):
- short: 4 prompts of ~100 tokens x 8 responses of ~60 = 96 evaluations;
- prompt1000: the same with prompts of ~1,000 tokens;
- long: 2 prompts x 8 responses of ~800 tokens of step-by-step arithmetic = 48 evaluations.
Systems, interleaved in every repeat, best of N after a warm-up, every vLLM run from an
empty prefix cache, all scoring the same rendered token ids:
(a) transformers in process, padded batches of 16 full evaluations (a TRL user's judge);
(b) a vLLM OpenAI server given all evaluations in one /v1/completions request;
(c) the same server, one request per evaluation, 16 in flight;
(d) rlme over HTTP, transformers backend (prefix-tree packing, tree attention);
(e)-(h) rlme over HTTP, remote backend in front of (b)'s server, one process for each
    `request_shape`: auto (a fresh process a workload, after LEARNING_REQUESTS untimed
    requests, since it learns on live batches), waves, batched, per_evaluation.
`--systems` picks the letters to run ((b) and (c) always run: the direct baselines).
Reported: evaluations/s, ratios to the best peer (of a-c) and of (e)-(h) to the best
direct way to call the server (b or c), tokens computed, and for (a) and (d) the fraction
of the machine's measured float32 matmul peak (2 x non-embedding parameters x tokens
computed / time / peak; attention FLOPs left out, so it is a lower bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from bench_vllm import SERVED, rlme_remote, vllm_server  # noqa: E402
from measure import left_padded, matmul_peak  # noqa: E402
from workload import GRPO_QUESTIONS as QUESTIONS  # noqa: E402
from workload import WORKLOADS  # noqa: E402

from rlme.client.wire import Item, MetaQuestion  # noqa: E402
from rlme.service.backends.base import build_task  # noqa: E402
from rlme.service.backends.transformers_backend import TransformersBackend  # noqa: E402
from rlme.service.model_store import EMBEDDED, resolve_model  # noqa: E402
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings  # noqa: E402

from support import start_server  # noqa: E402

# (e)...: the remote backend in front of (b)'s server, one rlme process per request shape
REMOTE_SHAPES = {"e": "auto", "f": "waves", "g": "batched", "h": "per_evaluation"}
LEARNING_REQUESTS = 8  # untimed requests `auto` sees first (a warm-up, TRIALS x 3 shapes, 1), per workload


async def timed(run: Callable[[], Awaitable[Any]], reset: Callable[[], Awaitable[Any]]) -> float:
    await reset()
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started


async def measure(
    client: httpx.AsyncClient,
    workload: str,
    only: str,
    urls: dict[str, str],
    local: TransformersBackend,
    repeats: int,
    peak: float,
) -> dict[str, Any]:
    """One workload: every system, interleaved, best of `repeats`; prints and returns its rows."""
    hf, tokenizer = local._model, local.tokenizer
    body_params = sum(p.numel() for n, p in hf.named_parameters() if "embed" not in n)
    questions = [MetaQuestion(**q) for q in QUESTIONS]

    items = WORKLOADS[workload]()
    tasks = [build_task(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(**i), questions) for i in items]
    sequences = [list(s) for t in tasks for s in t.sequences]
    n = len(sequences)
    total_tokens = sum(map(len, sequences))
    computed: dict[str, int] = {"(a) transformers padded": total_tokens}

    async def reset() -> None:
        (await client.post(f"{urls['vllm']}/reset_prefix_cache")).raise_for_status()

    async def no_reset() -> None:
        return None

    async def padded() -> None:
        with torch.inference_mode():
            for start in range(0, n, 16):
                ids, mask = left_padded(sequences[start : start + 16])
                hf(input_ids=ids, attention_mask=mask, logits_to_keep=1)

    def completion(prompt: Any) -> dict[str, Any]:
        return {
            "model": SERVED,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": 20,
        }

    async def batched() -> None:
        answer = await client.post(f"{urls['vllm']}/v1/completions", json=completion(sequences))
        usage = answer.raise_for_status().json()["usage"]
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        computed["(b) vLLM, one batched request"] = usage["prompt_tokens"] - cached

    async def per_evaluation() -> None:
        limit, cached = asyncio.Semaphore(16), []

        async def call(s: list[int]) -> None:
            async with limit:
                answer = await client.post(f"{urls['vllm']}/v1/completions", json=completion(s))
                usage = answer.raise_for_status().json()["usage"]
                cached.append((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)

        await asyncio.gather(*(call(s) for s in sequences))
        computed["(c) vLLM, per evaluation, 16 in flight"] = total_tokens - sum(cached)

    async def service(url: str, name: str) -> None:
        answer = await client.post(f"{url}/v1/rewards", json={"items": items, "questions": QUESTIONS})
        usage = answer.raise_for_status().json()["usage"]
        computed[name] = usage["prompt_tokens"] - usage["cached_prompt_tokens"]

    systems: dict[str, tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]] = {
        "(a) transformers padded": (padded, no_reset),
        "(b) vLLM, one batched request": (batched, reset),
        "(c) vLLM, per evaluation, 16 in flight": (per_evaluation, reset),
        "(d) rlme, transformers backend": (
            lambda: service(urls["ours"], "(d) rlme, transformers backend"),
            no_reset,
        ),
    }
    for letter, shape in REMOTE_SHAPES.items():
        name = f"({letter}) rlme, remote in front of (b), {shape}"
        systems[name] = (lambda url=urls[shape], name=name: service(url, name), reset)
    systems = {name: run for name, run in systems.items() if name[1] in only + "bc"}
    if "auto" in urls:  # it learns on live batches: let it try every shape first
        for _ in range(LEARNING_REQUESTS):
            await timed(lambda: service(urls["auto"], "learning"), reset)
    best = dict.fromkeys(systems, float("inf"))
    for attempt in range(repeats + 1):  # the first round warms up
        for name, (run, before) in systems.items():
            seconds = await timed(run, before)
            if attempt:
                best[name] = min(best[name], seconds)
    peers = [name for name in systems if name[1] in "abc"]
    strongest = min(peers, key=lambda k: best[k])
    direct = min((p for p in peers if p[1] in "bc"), key=lambda k: best[k])  # best way to call vLLM
    rows = {}
    for name, seconds in best.items():
        rows[name] = {
            "eval_per_s": n / seconds,
            "ratio_to_best_peer": best[strongest] / seconds,
            "tokens_computed": computed.get(name),
        }
        if name[1] in REMOTE_SHAPES:
            rows[name]["ratio_to_best_direct_vllm"] = best[direct] / seconds
        if name.startswith(("(a)", "(d)")):
            rows[name]["matmul_peak_fraction"] = 2 * body_params * computed[name] / seconds / peak
    result = {
        "evaluations": n, "tokens": total_tokens, "best_peer": strongest, "best_direct": direct,
        "systems": rows,
    }  # fmt: skip
    print(f"\n{workload}: {n} evaluations, {total_tokens} tokens; best peer {strongest}")
    print("| system | eval/s | vs best peer | vs best direct vLLM | tokens computed | matmul peak |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        frac = f"{row['matmul_peak_fraction']:.0%}" if "matmul_peak_fraction" in row else "-"
        versus = f"{row['ratio_to_best_direct_vllm']:.2f}x" if "ratio_to_best_direct_vllm" in row else "-"
        print(
            f"| {name} | {row['eval_per_s']:.2f} | {row['ratio_to_best_peer']:.2f}x | {versus} | "
            f"{row['tokens_computed']} | {frac} |"
        )
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--systems", default="abcdefgh", help="letters of the systems to run (b, c always)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grpo_peers.json")
    args = parser.parse_args()
    model = resolve_model(EMBEDDED, Settings.load().cache_dir)
    peak = matmul_peak()
    # (a) is plain transformers: SDPA with its own padding mask, not our tree attention
    local = TransformersBackend(
        EvaluatorConfig(dtype="float32", tree_attention="dense"), Settings.load().cache_dir
    )
    local.setup()
    report: dict[str, Any] = {"matmul_peak_gflops": peak / 1e9, "workloads": {}}
    server = vllm_server(model)
    shapes = [shape for letter, shape in REMOTE_SHAPES.items() if letter in args.systems]
    remotes = {shape: rlme_remote(model, server.url, shape) for shape in shapes if shape != "auto"}
    with start_server(Path(tempfile.mkdtemp(prefix="rlme-bench-"))) as ours_url:
        urls = {"vllm": server.url, "ours": ours_url, **{k: r.url for k, r in remotes.items()}}
        async with httpx.AsyncClient(timeout=1800) as client:
            for workload in args.workloads:
                if "auto" in shapes:  # a fresh one a workload: what it learnt is per workload
                    auto = rlme_remote(model, server.url, "auto")
                    urls["auto"] = auto.url
                report["workloads"][workload] = await measure(
                    client, workload, args.systems, urls, local, args.repeats, peak
                )
                if "auto" in shapes:
                    auto.stop()
    for remote in remotes.values():
        remote.stop()
    server.stop()
    print(f"\nfloat32 matmul peak {peak / 1e9:.1f} GFLOP/s; best of {args.repeats}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
