"""A test double of a vLLM OpenAI server, on a real socket: what the remote backend sees of
a replica that works, hangs, answers garbage or closes the connection mid-body.

Raw HTTP/1.1 over asyncio streams (no framework), so a fault is what it is on the wire: a
hang is a server that never writes, a cut is a Content-Length it never fills. The working
answers follow the vLLM 0.32 shapes the backend reads (/health, /v1/models, /tokenize,
/v1/completions with `logprob_token_ids`); a log-prob depends on the prompt and token only,
so every working replica gives the same numbers.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from rlme.service.prompting import encode

MODES = ("up", "hang", "garbage", "cut")


def logprob(prompt: list[int], token_id: int) -> float:
    return -1.0 - (sum(prompt) % 97) / 50 - (token_id % 13) / 10


class ReplicaDouble:
    """`mode` applies to /v1/completions; /health and the start-up checks always work, so a
    faulty replica joins the pool and fails only when given work (the hard case)."""

    def __init__(self, tokenizer: Any, mode: str = "up") -> None:
        assert mode in MODES, mode
        self.tokenizer, self.mode = tokenizer, mode
        self.completions = 0  # /v1/completions requests received
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # their connections closed
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on this connection
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:])
                               if k.lower() == "content-length"), 0)  # fmt: skip
                body = json.loads(await reader.readexactly(length)) if length else None
                if not await self._answer(writer, method, path, body):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, path: str, body: Any) -> bool:
        """Write one answer; False when the connection is to end."""
        if path == "/v1/completions":
            self.completions += 1
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.mode == "garbage":
                return await _write(writer, 200, b"<html>502 Bad Gateway from a proxy</html>", "text/html")
            if self.mode == "cut":
                whole = json.dumps(self._complete(body)).encode()
                head = _head(200, "application/json", len(whole))
                writer.write(head + whole[: len(whole) // 2])
                await writer.drain()
                return False  # closes with half the promised body sent
            return await _write(writer, 200, json.dumps(self._complete(body)).encode())
        if path == "/health":
            return await _write(writer, 200, b"")
        if path == "/v1/models":
            models = {"data": [{"id": "evaluator", "max_model_len": 1024}]}
            return await _write(writer, 200, json.dumps(models).encode())
        if path == "/tokenize":
            tokens = encode(self.tokenizer, body["prompt"])
            return await _write(writer, 200, json.dumps({"tokens": tokens, "count": len(tokens)}).encode())
        return await _write(writer, 404, b'{"error": "no such route"}')

    @staticmethod
    def _complete(body: dict[str, Any]) -> dict[str, Any]:
        labels = body["logprob_token_ids"]
        choices = [
            {"index": i, "logprobs": {"top_logprobs": [{f"token_id:{t}": logprob(p, t) for t in labels}]}}
            for i, p in enumerate(body["prompt"])
        ]
        usage = {
            "prompt_tokens": sum(map(len, body["prompt"])),
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        return {"choices": choices, "usage": usage}


async def _write(
    writer: asyncio.StreamWriter, status: int, content: bytes, kind: str = "application/json"
) -> bool:
    writer.write(_head(status, kind, len(content)) + content)
    await writer.drain()
    return True


def _head(status: int, kind: str, length: int) -> bytes:
    reason = {200: "OK", 404: "Not Found"}[status]
    return f"HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {length}\r\n\r\n".encode()
