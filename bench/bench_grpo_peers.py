"""GRPO-shaped reward requests against the peers a user would pick, in one run.

    python bench/bench_grpo_peers.py       # ~20 min on 2 CPU cores; needs vLLM (make bench-peers)

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
(e) rlme over HTTP, remote backend in front of (b)'s server, `request_shape: waves`;
(f) the same, `request_shape: batched`.
Reported: evaluations/s, ratios to the best peer (of a-c) and of (e), (f) to the best
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
from workload import word_problem  # noqa: E402

from rlme.client.wire import Item, MetaQuestion  # noqa: E402
from rlme.service.backends.base import build_task  # noqa: E402
from rlme.service.backends.transformers_backend import TransformersBackend  # noqa: E402
from rlme.service.model_store import EMBEDDED, resolve_model  # noqa: E402
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings  # noqa: E402

from support import start_server  # noqa: E402

QUESTIONS = [
    {"id": "correct", "text": "Is the answer correct?"},
    {"id": "logical", "text": "Does the whole solution logically lead from the question to an answer?"},
    {"id": "polite", "text": "Is the response polite?"},
]


def grpo_request(prompt_tokens: int, seed: int = 0) -> list[dict[str, str]]:
    """4 prompts of about `prompt_tokens` tokens, 8 different worked answers each."""
    import random

    rng = random.Random(seed)
    items = []
    for p in range(4):
        base = word_problem(rng, steps=2)
        context = f"Problem {p + 1}. " + " ".join(
            word_problem(rng, 3)["prompt"] for _ in range(prompt_tokens // 60)
        )
        prompt = f"{context}\n{base['prompt']}"
        for g in range(8):
            answer = word_problem(random.Random(f"{seed}-{p}-{g}"), steps=2)["response"]
            items.append({"prompt": prompt, "response": answer})
    return items


def long_request(seed: int = 0) -> list[dict[str, str]]:
    """2 prompts, 8 worked answers of ~800 tokens each (about 45 steps of arithmetic)."""
    import random

    rng, items = random.Random(seed), []
    for p in range(2):
        prompt = word_problem(rng, steps=3)["prompt"]
        for g in range(8):
            answer = word_problem(random.Random(f"{seed}-long-{p}-{g}"), steps=45)["response"]
            items.append({"prompt": prompt, "response": answer})
    return items


WORKLOADS: dict[str, Callable[[], list[dict[str, str]]]] = {
    "short": lambda: grpo_request(100),
    "prompt1000": lambda: grpo_request(1000),
    "long": long_request,
}


def matmul_peak(size: int = 1024, repeats: int = 20) -> float:
    """Best float32 FLOP/s of one square matmul on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


async def timed(run: Callable[[], Awaitable[Any]], reset: Callable[[], Awaitable[Any]]) -> float:
    await reset()
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started


async def measure(
    client: httpx.AsyncClient,
    workload: str,
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
                chunk = sequences[start : start + 16]
                width = max(map(len, chunk))
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for b, s in enumerate(chunk):  # left padding: the answer is the last column
                    ids[b, width - len(s) :], mask[b, width - len(s) :] = torch.tensor(s), 1
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
        "(e) rlme, remote in front of (b), waves": (
            lambda: service(urls["waves"], "(e) rlme, remote in front of (b), waves"),
            reset,
        ),
        "(f) rlme, remote in front of (b), batched": (
            lambda: service(urls["batched"], "(f) rlme, remote in front of (b), batched"),
            reset,
        ),
    }
    best = dict.fromkeys(systems, float("inf"))
    for attempt in range(repeats + 1):  # the first round warms up
        for name, (run, before) in systems.items():
            seconds = await timed(run, before)
            if attempt:
                best[name] = min(best[name], seconds)
    peers = (
        "(a) transformers padded",
        "(b) vLLM, one batched request",
        "(c) vLLM, per evaluation, 16 in flight",
    )
    strongest = min(peers, key=lambda k: best[k])
    direct = min(peers[1:], key=lambda k: best[k])  # the best way to call the vLLM server
    rows = {}
    for name, seconds in best.items():
        rows[name] = {
            "eval_per_s": n / seconds,
            "ratio_to_best_peer": best[strongest] / seconds,
            "tokens_computed": computed.get(name),
        }
        if name.startswith(("(e)", "(f)")):
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
    remotes = {shape: rlme_remote(model, server.url, shape) for shape in ("waves", "batched")}
    with start_server(Path(tempfile.mkdtemp(prefix="rlme-bench-"))) as ours_url:
        urls = {"vllm": server.url, "ours": ours_url, **{k: r.url for k, r in remotes.items()}}
        async with httpx.AsyncClient(timeout=1800) as client:
            for workload in args.workloads:
                report["workloads"][workload] = await measure(
                    client, workload, urls, local, args.repeats, peak
                )
    for remote in remotes.values():
        remote.stop()
    server.stop()
    print(f"\nfloat32 matmul peak {peak / 1e9:.1f} GFLOP/s; best of {args.repeats}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
