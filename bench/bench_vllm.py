"""vLLM benchmarks, measured in one run on one machine, each against its own baseline.

    python bench/bench_vllm.py     # ~8 min on 2 CPU cores; needs vLLM (make bench-vllm)

All rows score the same items (word problems of ~300 tokens, 4 meta-questions each) in
float32; every timed run starts with an empty prefix cache, so no run profits from the
one before it. vLLM runs eagerly (no torch.compile: minutes of start-up on 2 cores).

1. engines: transformers in process (shared prefix) vs vLLM in process (AsyncLLM,
   prefix caching) vs the remote backend (the HTTP service in front of one vLLM
   OpenAI server).                                                     (no goal: a choice)
2. prefix sharing with vLLM: prefix caching on vs off, in process.     goal >= 2.5x
3. against what users do today: the same vLLM OpenAI server called once per
   (item, question) with the rendered text and `logprobs: 20`, one call at a time, vs
   the reward service in front of that server.                          goal >= 1.5x
   Also shown: the same per-evaluation calls 16 at a time (no goal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from workload import QUESTIONS, items  # noqa: E402

from rlme.client.wire import Item, MetaQuestion  # noqa: E402
from rlme.service.backends.base import (
    ScoringTask,  # noqa: E402
    build_task,  # noqa: E402
)
from rlme.service.backends.transformers_backend import TransformersBackend  # noqa: E402
from rlme.service.backends.vllm_backend import VLLMBackend  # noqa: E402
from rlme.service.model_store import resolve_model  # noqa: E402
from rlme.service.prompting import render  # noqa: E402
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings  # noqa: E402

from support import free_port, wait_healthy  # noqa: E402

SERVED = "evaluator"
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
MAX_MODEL_LEN = 2048


class Process:
    """A server on 127.0.0.1 that is healthy once `GET /health` answers 200."""

    def __init__(self, command: list[str], url: str, env: dict[str, str], name: str) -> None:
        self.url = url
        self.log = Path(f"/tmp/rlme-bench-{name}.log")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(url, self.process, self.log, timeout=600)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def vllm_server(model: Path) -> Process:
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
        "--port", str(port), "--model", str(model), "--served-model-name", SERVED,
        "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager",
        "--enable-prompt-tokens-details",
    ]  # fmt: skip
    # Dev mode only for POST /reset_prefix_cache, so each timed run starts cold.
    return Process(command, f"http://127.0.0.1:{port}", {**VLLM_ENV, "VLLM_SERVER_DEV_MODE": "1"}, "vllm")


def rlme_remote(model: Path, vllm_url: str, shape: str = "waves") -> Process:
    port = free_port()
    remote = {"urls": [vllm_url], "served_model": SERVED, "timeout_s": 600, "request_shape": shape}
    evaluator = {
        "name": "default", "backend": "remote", "model": str(model), "max_model_len": MAX_MODEL_LEN,
        "remote": remote,
        # vLLM schedules tokens itself: one request's items go out as one batch.
        "batching": {"max_batch_evaluations": 256, "max_batch_tokens": 131072},
    }  # fmt: skip
    env = {"RLME_LOG_LEVEL": "warning", "RLME_EVALUATORS": json.dumps([evaluator])}
    command = [sys.executable, "-m", "rlme.trainer.cli", "serve", "--port", str(port)]
    return Process(command, f"http://127.0.0.1:{port}", env, "rlme")


def scoring_tasks(tokenizer: Any, raw_items: list[dict[str, str]]) -> list[ScoringTask]:
    questions = [MetaQuestion(**q) for q in QUESTIONS]
    return [build_task(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(**raw), questions) for raw in raw_items]


async def best_of(
    repeats: int, run: Callable[[], Awaitable[Any]], reset: Callable[[], Awaitable[Any]]
) -> float:
    """Fastest wall time of `repeats` cold-cache runs after one warm-up."""
    times = []
    for attempt in range(repeats + 1):
        await reset()
        started = time.perf_counter()
        await run()
        if attempt:  # the first is the warm-up
            times.append(time.perf_counter() - started)
    return min(times)


async def nothing() -> None:
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vllm.json")
    args = parser.parse_args()
    settings = Settings.load()
    model = resolve_model("embedded", settings.cache_dir)
    raw_items = items(args.items, steps=6, seed=1)
    evaluations = len(raw_items) * len(QUESTIONS)
    seconds: dict[str, float] = {}

    def report(name: str, value: float) -> None:
        seconds[name] = value
        print(f"{name}: {evaluations / value:.1f} eval/s", flush=True)

    # 1a. transformers in process, float32, shared prefix (the service's CPU default).
    transformers = TransformersBackend(EvaluatorConfig(dtype="float32"), settings.cache_dir)
    transformers.setup()
    tasks = scoring_tasks(transformers.tokenizer, raw_items)
    tokens = sum(t.prompt_tokens for t in tasks) / evaluations
    report(
        "transformers",
        await best_of(args.repeats, partial(asyncio.to_thread, transformers.score, tasks), nothing),
    )
    del transformers  # frees its memory for the engines below

    # 1b and 2. vLLM in process, prefix caching on, then off.
    for name, caching in (("vllm", True), ("vllm, no prefix caching", False)):
        options = {"enforce_eager": True, "cpu_kvcache_space_gib": 2, "enable_prefix_caching": caching}
        config = EvaluatorConfig(backend="vllm", dtype="float32", max_model_len=MAX_MODEL_LEN, vllm=options)
        engine = VLLMBackend(config, settings.cache_dir)
        await engine.setup_async()
        reset = engine.reset_prefix_cache if caching else nothing
        report(name, await best_of(args.repeats, partial(engine.score_async, tasks), reset))
        await engine.aclose()

    # 1c and 3. One vLLM OpenAI server: called per evaluation as users do, then behind rlme.
    server = vllm_server(model)
    service = None
    try:
        async with httpx.AsyncClient(timeout=600) as client:

            async def reset_server() -> None:
                (await client.post(f"{server.url}/reset_prefix_cache")).raise_for_status()

            texts = [
                render(transformers_tokenizer(model), DEFAULT_SYSTEM_PROMPT, Item(**raw), MetaQuestion(**q))
                for raw in raw_items
                for q in QUESTIONS
            ]

            async def per_evaluation(text: str) -> None:
                body = {"model": SERVED, "prompt": text, "max_tokens": 1, "temperature": 0, "logprobs": 20}
                (await client.post(f"{server.url}/v1/completions", json=body)).raise_for_status()

            async def one_at_a_time() -> None:
                for text in texts:
                    await per_evaluation(text)

            async def sixteen_at_a_time() -> None:
                limit = asyncio.Semaphore(16)

                async def call(text: str) -> None:
                    async with limit:
                        await per_evaluation(text)

                await asyncio.gather(*(call(t) for t in texts))

            report(
                "vLLM server, one call per evaluation",
                await best_of(args.repeats, one_at_a_time, reset_server),
            )
            report(
                "vLLM server, 16 calls in flight",
                await best_of(args.repeats, sixteen_at_a_time, reset_server),
            )

            service = rlme_remote(model, server.url)

            async def through_service() -> None:
                body = {"items": raw_items, "questions": QUESTIONS}
                (await client.post(f"{service.url}/v1/rewards", json=body)).raise_for_status()

            report(
                "remote (rlme in front of the server)",
                await best_of(args.repeats, through_service, reset_server),
            )
    finally:
        if service is not None:
            service.stop()
        server.stop()

    rows = [
        ("engines", "transformers", "vllm", None),
        ("engines", "transformers", "remote (rlme in front of the server)", None),
        ("prefix sharing with vLLM", "vllm, no prefix caching", "vllm", 2.5),
        ("vs vLLM server per evaluation", "vLLM server, one call per evaluation",
         "remote (rlme in front of the server)", 1.5),
        ("vs vLLM server per evaluation", "vLLM server, 16 calls in flight",
         "remote (rlme in front of the server)", None),
    ]  # fmt: skip
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(
        f"\nSmolLM2-135M-Instruct, float32, {machine}; {len(raw_items)} items x {len(QUESTIONS)} "
        f"questions, {tokens:.0f} tokens per evaluation; best of {args.repeats} cold-cache runs\n"
    )
    print("| benchmark | baseline (eval/s) | ours (eval/s) | ratio | goal |")
    print("|---|---|---|---|---|")
    results = []
    for benchmark, base, ours, goal in rows:
        ratio = seconds[base] / seconds[ours]
        goal_text = f">= {goal}x" if goal else "-"
        print(f"| {benchmark} | {base}: {evaluations / seconds[base]:.1f} | {ours}: "
              f"{evaluations / seconds[ours]:.1f} | **{ratio:.2f}x** | {goal_text} |")  # fmt: skip
        results.append({"benchmark": benchmark, "baseline": base, "ours": ours, "ratio": ratio, "goal": goal})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine,
                "eval_per_s": {k: evaluations / v for k, v in seconds.items()},
                "rows": results,
            },
            indent=2,
        )
    )


def transformers_tokenizer(model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


if __name__ == "__main__":
    asyncio.run(main())
