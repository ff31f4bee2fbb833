"""Where the remote path's time goes: the service's own CPU per request beside the engine's.

    python bench/profile_remote.py             # ~27 min on 2 CPU cores; needs vLLM (make bench-peers)
    python bench/profile_remote.py --py-spy    # also a py-spy profile of the service process

One vLLM OpenAI server and one rlme service (`backend: remote`, one `request_shape`) in
front of it, on the GRPO workloads of bench_grpo_peers.py. For each request it records the
wall time and the CPU seconds each process used (psutil, children included): the service's
CPU is work the engine cannot use on a machine where both share the cores, so its share
of the wall time bounds what the service can add over calling the engine directly. The
same token ids are also sent straight to the server both ways bench_grpo_peers.py does
((b) one list-prompt request, (c) one request an evaluation, 16 in flight), interleaved,
and the service's time is compared with the faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from bench_grpo_peers import LEARNING_REQUESTS  # noqa: E402
from bench_vllm import SERVED, rlme_remote, vllm_server  # noqa: E402
from measure import matmul_peak  # noqa: E402
from workload import GRPO_QUESTIONS as QUESTIONS  # noqa: E402
from workload import WORKLOADS  # noqa: E402

from rlme.client.wire import Item, MetaQuestion  # noqa: E402
from rlme.service.backends.base import build_task  # noqa: E402
from rlme.service.model_store import EMBEDDED, resolve_model  # noqa: E402
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, Settings  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children alive now."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def measure(
    client: httpx.AsyncClient, server: Any, remote: Any, workload: str, tokenizer: Any, args: Any
) -> dict[str, Any]:
    """One workload: the direct call and the service, interleaved; wall and CPU per request."""
    items = WORKLOADS[workload]()
    questions = [MetaQuestion(**q) for q in QUESTIONS]
    tasks = [build_task(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(**i), questions) for i in items]
    sequences = [list(s) for t in tasks for s in t.sequences]
    rows: dict[str, list[dict[str, float]]] = {"direct": [], "direct_per_evaluation": [], "service": []}

    def completion(prompt: Any) -> dict[str, Any]:
        return {"model": SERVED, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 20}

    async def direct() -> None:  # (b) of bench_grpo_peers: one list-prompt request
        (await client.post(f"{server.url}/v1/completions", json=completion(sequences))).raise_for_status()

    async def direct_per_evaluation() -> None:  # (c): one request an evaluation, 16 in flight
        limit = asyncio.Semaphore(16)

        async def one(sequence: list[int]) -> None:
            async with limit:
                answer = await client.post(f"{server.url}/v1/completions", json=completion(sequence))
                answer.raise_for_status()

        await asyncio.gather(*(one(s) for s in sequences))

    async def service() -> None:
        body = {"items": items, "questions": QUESTIONS}
        (await client.post(f"{remote.url}/v1/rewards", json=body)).raise_for_status()

    async def cold() -> None:
        (await client.post(f"{server.url}/reset_prefix_cache")).raise_for_status()

    if args.shape == "auto":  # it learns on live batches: let it try every shape first
        for _ in range(LEARNING_REQUESTS):
            await cold()
            await service()
    rows_and_runs = [
        ("direct", direct),
        ("direct_per_evaluation", direct_per_evaluation),
        ("service", service),
    ]
    for attempt in range(args.repeats + 1):  # the first round warms up
        for name, run in rows_and_runs:
            await cold()
            engine, ours = cpu_seconds(server.process.pid), cpu_seconds(remote.process.pid)
            started = time.perf_counter()
            await run()
            wall = time.perf_counter() - started
            engine, ours = cpu_seconds(server.process.pid) - engine, cpu_seconds(remote.process.pid) - ours
            if attempt:
                rows[name].append({"wall_s": wall, "engine_cpu_s": engine, "service_cpu_s": ours})
    shapes = {}  # what request_shape auto measured and uses (its metrics)
    for line in (await client.get(f"{remote.url}/metrics")).text.splitlines():
        if line.startswith(
            ("rlme_remote_request_shape_tokens_per_second{", "rlme_remote_request_shape_used{")
        ):
            shapes[line.split(" ")[0]] = float(line.split(" ")[1])
    best = {name: min(r["wall_s"] for r in runs) for name, runs in rows.items()}
    fastest = min(best["direct"], best["direct_per_evaluation"])
    service_cpu = sorted(r["service_cpu_s"] for r in rows["service"])[len(rows["service"]) // 2]
    print(
        f"{workload}: direct batched {best['direct']:.2f} s, "
        f"per evaluation {best['direct_per_evaluation']:.2f} s, "
        f"service {best['service']:.2f} s ({fastest / best['service']:.3f}x the best direct); the service's "
        f"own CPU {service_cpu:.3f} s a request ({service_cpu / best['service']:.1%} of its wall time)",
        flush=True,
    )
    for name, value in shapes.items():
        print(f"  {name} {value:.0f}", flush=True)
    return {
        "evaluations": len(sequences),
        "runs": rows,
        "best_s": best,
        "request_shapes": shapes,
        "service_vs_best_direct": fastest / best["service"],
        "service_cpu_s_median": service_cpu,
        "service_cpu_share_of_wall": service_cpu / best["service"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--shape", default="auto", choices=["auto", "waves", "batched", "per_evaluation"])
    parser.add_argument("--py-spy", action="store_true", help="profile the service during the timed requests")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "profile_remote.json")
    args = parser.parse_args()
    model = resolve_model(EMBEDDED, Settings.load().cache_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    peak = matmul_peak()
    server = vllm_server(model)
    remote = rlme_remote(model, server.url, args.shape)
    report: dict[str, Any] = {"matmul_peak_gflops": peak / 1e9, "shape": args.shape, "workloads": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    spy = None
    if args.py_spy:  # raw collapsed stacks (py-spy may count waiting threads too)
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(remote.process.pid), "--format", "raw", "--rate", "200",
             "--output", str(args.out.with_suffix(".pyspy.txt")), "--subprocesses"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=1800) as client:
            for workload in args.workloads:
                report["workloads"][workload] = await measure(
                    client, server, remote, workload, tokenizer, args
                )
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        remote.stop()
        server.stop()
    print(f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s; best of {args.repeats}")
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
