"""Helpers for the tests that need vLLM: its warnings, and a real vLLM OpenAI server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support import ITEMS, QUESTIONS, wait_healthy

__all__ = ["ITEMS", "QUESTIONS"]  # shared with the transformers tests, re-exported for the vLLM ones

# vLLM and the torch modules it imports warn about their own deprecations; not ours.
VLLM_WARNINGS = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:torch.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:vllm.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:vllm.*"),
]

# Longer than vLLM's CPU cache block (128 tokens), so its prefix can be cached.
LONG_ITEM = {
    "prompt": "Tom has 12 apples. He buys 7 more, then gives 5 to Ann. How many apples does Tom have?",
    "response": "Tom starts with 12 apples. Buying 7 more gives 12 + 7 = 19 apples. "
    "Giving 5 to Ann leaves 19 - 5 = 14 apples. So Tom has 14 apples at the end. " * 2 + "The answer is 14.",
}


def assert_same_scores(ours: dict, reference: dict, tolerance: float = 1e-3) -> None:
    assert len(ours["results"]) == len(reference["results"])
    for mine, theirs in zip(ours["results"], reference["results"]):
        for a, b in zip(mine["scores"], theirs["scores"], strict=True):
            assert a["question"] == b["question"]
            assert a["logp_yes"] == pytest.approx(b["logp_yes"], abs=tolerance)
            assert a["logp_no"] == pytest.approx(b["logp_no"], abs=tolerance)
            assert a["p_yes"] == pytest.approx(b["p_yes"], abs=tolerance)
        assert mine["reward"] == pytest.approx(theirs["reward"], abs=tolerance * 4)


def metric(response: httpx.Response, name: str) -> float:
    total = 0.0
    for line in response.text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1:`port`, float32 on the CPU.

    Started and stopped by the tests; `kill()` is a crash (SIGKILL), `start()` again on the
    same port is the replica coming back.
    """

    SERVED_NAME = "evaluator"

    def __init__(self, model: Path, port: int, log_dir: Path, max_model_len: int) -> None:
        self.model, self.port, self.log_dir, self.max_model_len = model, port, log_dir, max_model_len
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--model", str(self.model), "--served-model-name", self.SERVED_NAME,
            "--dtype", "float32", "--max-model-len", str(self.max_model_len),
            "--enforce-eager", "--enable-prompt-tokens-details",
        ]  # fmt: skip
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        log = self.log_dir / f"vllm-{self.port}-{self.starts}.log"
        with log.open("wb") as out:
            # Own process group: kill() takes the engine and worker processes with it.
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.log = log

    def wait_healthy(self, timeout: float = 420) -> None:
        assert self.process is not None
        wait_healthy(self.url, self.process, self.log, timeout)

    def kill(self) -> None:
        """A crash: SIGKILL to the server and its engine processes."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def served_requests(self) -> float:
        """Requests this server process finished, from its Prometheus metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vllm:request_success_total")
        )


# The judge requests every engine must answer alike under greedy decoding.
JUDGE_REQUESTS = [
    ("/v1/judgments", {"items": [{"prompt": "What is 2+2?", "response": "2+2 = 4."}], "max_tokens": 16}),
    (
        "/v1/comparisons",
        {
            "pairs": [{"prompt": "Say hi.", "response_a": "Hello!", "response_b": "Go away."}],
            "max_tokens": 16,
        },
    ),
]


async def assert_same_judgments(ours: httpx.AsyncClient, reference: httpx.AsyncClient) -> None:
    """Identical rationales and verdict probabilities within 1e-3, on every judge route."""
    for path, body in JUDGE_REQUESTS:
        mine, theirs = await ours.post(path, json=body), await reference.post(path, json=body)
        assert mine.status_code == 200, mine.text
        assert theirs.status_code == 200, theirs.text
        a, b = mine.json(), theirs.json()
        judgments_a = [j for r in a["results"] for o in r.get("orders", [r]) for j in o["judgments"]]
        judgments_b = [j for r in b["results"] for o in r.get("orders", [r]) for j in o["judgments"]]
        assert len(judgments_a) == len(judgments_b) > 0
        for x, y in zip(judgments_a, judgments_b, strict=True):
            assert x["rationale"] == y["rationale"]
            assert x["generated_tokens"] == y["generated_tokens"]
            for label, p in x["verdict_probs"].items():
                assert p == pytest.approx(y["verdict_probs"][label], abs=1e-3)
