"""Generative judges: judgments/s through the service vs what a TRL user writes.

    python bench/bench_judges.py            # ~5 min on 2 CPU cores (make bench-judges)

Workload: 16 (prompt, response) pairs from bench/data/judge_dev.jsonl, the built-in
`additive_5` judge, greedy, at most 48 rationale tokens, float32, the embedded model.
Systems interleaved in every repeat, best of N after a warm-up:
- peer: one `model.generate` per item, in process, as a TRL user writes a judge reward
  (render the same judge prompt, generate, decode; no verdict read at all);
- ours, one request: the 16 items in one POST /v1/judgments over HTTP (generation and the
  verdict read, one prefill per judgment);
- ours, 16 callers: 16 concurrent single-item requests (what a trainer's reward workers do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from rlme.service.backends.transformers_backend import TransformersBackend  # noqa: E402
from rlme.service.judging.templates import ADDITIVE_5, fill  # noqa: E402
from rlme.service.prompting import tokenize_turn  # noqa: E402
from rlme.service.settings import EvaluatorConfig, Settings  # noqa: E402

from support import start_server  # noqa: E402

TOKENS = 48


def workload(n: int) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "judge_dev.jsonl").open()]
    return [{"prompt": r["prompt"], "response": r["good"]} for r in rows[:: max(1, len(rows) // n)][:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--items", type=int, default=16)
    args = parser.parse_args()
    items = workload(args.items)
    backend = TransformersBackend(EvaluatorConfig(dtype="float32"), Settings.load().cache_dir)
    backend.setup()
    model, tokenizer = backend._model, backend.tokenizer
    prompts = [
        torch.tensor(
            [tokenize_turn(tokenizer, ADDITIVE_5.system_prompt, fill(ADDITIVE_5, {**i, "reference": None}))]
        )
        for i in items
    ]

    def peer() -> int:
        written = 0
        with torch.inference_mode():
            for ids in prompts:
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=TOKENS, do_sample=False
                )
                tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
                written += out.shape[1] - ids.shape[1]
        return written

    body = {"items": items, "judge": "additive_5", "max_tokens": TOKENS}

    with start_server(Path(tempfile.mkdtemp(prefix="rlme-bench-"))) as url:

        def one_request() -> int:
            answer = httpx.post(f"{url}/v1/judgments", json=body, timeout=1200)
            answer.raise_for_status()
            return int(answer.json()["usage"]["generated_tokens"])

        async def callers() -> int:
            async with httpx.AsyncClient(base_url=url, timeout=1200) as client:
                answers = await asyncio.gather(
                    *(client.post("/v1/judgments", json={**body, "items": [i]}) for i in items)
                )
            return sum(int(a.raise_for_status().json()["usage"]["generated_tokens"]) for a in answers)

        systems = {"peer": peer, "one request": one_request, "16 callers": lambda: asyncio.run(callers())}
        best = dict.fromkeys(systems, float("inf"))
        tokens = {}
        for name, run in systems.items():  # warm-up
            tokens[name] = run()
        for _ in range(args.repeats):
            for name, run in systems.items():  # interleaved
                started = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - started)
    n = len(items)
    print(f"\n{n} judgments, greedy, <= {TOKENS} tokens each; best of {args.repeats}")
    print("| system | judgments/s | generated tokens | ratio to peer |")
    print("|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {n / seconds:.2f} | {tokens[name]} | {best['peer'] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
