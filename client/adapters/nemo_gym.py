"""NeMo Gym adapter: a resources server that speaks Gym's HTTP protocol and scores through rlme.

A Gym agent (e.g. `simple_agent`) POSTs each rollout to its resources server's `/verify`:
the dataset row's fields, `responses_create_params` (what the policy was asked: `input`
text or messages, `instructions`) and `response` (an OpenAI Responses object whose
`output` holds the policy's messages), and takes back the same body with `reward` added
(nemo_gym/base_resources_server.py: BaseVerifyRequest, BaseVerifyResponse). This server
answers that with rlme's reward for (prompt, the last assistant message's text, the row's
`expected_answer` as the reference), so a Gym config points at it like at any resources
server (docs/integrations/nemo_gym.md).

A failed reward is not a 0: the response carries Gym's judge-failure tag
(`_ng_failure_class: "judge_failed"`, `_ng_failure_judge_error`: Gym's rollout collection
writes such rows to its failures file and leaves them out of its metrics) and NeMo RL's
mask (`instance_config.mask_sample: true`: its GRPO zeroes the loss of the sample when
`env.should_mask_flagged_samples`). Gym's schema needs a float, so `reward` is 0.0 there
and means nothing. Also served: `/seed_session`, `/aggregate_metrics` and `/reverify_mode`.

    python -m rlme.client.adapters.nemo_gym --port 8010 [--timeout 60] [--batch-ms 5]
    # rlme from $RLME_BASE_URL / $RLME_API_KEY; what to ask from $RLME_RUBRIC or
    # $RLME_QUESTIONS, $RLME_EVALUATORS, $RLME_RUN (as the other adapters)

Verify calls arriving together are scored in one rlme request (`--batch-ms`). Needs FastAPI
and uvicorn (`pip install 'rlme[front]'`); Gym itself is not imported.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from ..client import AsyncRewardClient
from ..wire import Item
from ..wire.base import check_text
from ._common import Outcome, Scoring, first_reference, message_text, score_outcomes

__all__ = ["create_app", "answer_text", "prompt_of", "verify_response"]

REFERENCE_KEYS = ("expected_answer", "reference", "ground_truth", "answer")
FAILURE_CLASS = "_ng_failure_class"  # nemo_gym/judge.py and rollout_collection.py


def answer_text(response: Mapping[str, Any]) -> str:
    """The policy's answer: the text of the last assistant message of `response.output`
    (reasoning items and tool calls are not the answer)."""
    output = response.get("output") or []
    messages = [item for item in output if isinstance(item, Mapping) and item.get("type") == "message"]
    if not messages:
        return ""
    content = messages[-1].get("content") or []
    if isinstance(content, str):
        return content
    parts = [
        part for part in content if isinstance(part, Mapping) and part.get("type") in ("output_text", "text")
    ]
    return "".join(str(part.get("text", "")) for part in parts)


def prompt_of(params: Mapping[str, Any]) -> str | list[dict[str, str]]:
    """What the policy was asked: `input` (text, or messages) after `instructions`."""
    given = params.get("input")
    instructions = params.get("instructions")
    if isinstance(given, str):
        return given if not instructions else [{"role": "system", "content": str(instructions)},
                                               {"role": "user", "content": given}]  # fmt: skip
    messages = [{"role": "system", "content": str(instructions)}] if instructions else []
    for message in given or []:
        role = message.get("role") if isinstance(message, Mapping) else None
        if role in ("system", "developer", "user", "assistant"):
            messages.append(
                {
                    "role": "system" if role == "developer" else role,
                    "content": message_text(message.get("content")),
                }
            )
    return messages


def verify_response(body: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """The verify body back with the reward, or with Gym's failure tag and NeMo RL's mask."""
    if not outcome.failed:
        return {**body, "reward": outcome.reward}
    config = {**(body.get("instance_config") or {}), "mask_sample": True}
    return {**body, "reward": 0.0, "instance_config": config, FAILURE_CLASS: "judge_failed",
            "_ng_failure_judge_error": outcome.failure}  # fmt: skip


class _Batcher:
    """Verify calls that arrive within `wait_s` of each other go to rlme as one request."""

    def __init__(self, client: AsyncRewardClient, scoring: Scoring, wait_s: float, timeout_s: float | None):
        self.client, self.scoring, self.wait_s, self.timeout_s = client, scoring, wait_s, timeout_s
        self._pending: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._flush: asyncio.Task[None] | None = None

    async def score(self, item: Item) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flush is None:
            self._flush = asyncio.create_task(self._later())
        return await future

    async def _later(self) -> None:
        await asyncio.sleep(self.wait_s)
        batch, self._pending, self._flush = self._pending, [], None
        found = [Outcome(None, "rlme: the server stopped before scoring")] * len(batch)
        try:
            found = await self._score([item for item, _ in batch])
        except Exception as exc:  # never leave a /verify call waiting
            found = [Outcome(None, f"rlme: {type(exc).__name__}: {exc}")] * len(batch)
        finally:
            for (_, future), outcome in zip(batch, found, strict=True):
                if not future.done():
                    future.set_result(outcome)

    async def _score(self, items: list[Item]) -> list[Outcome]:
        found = await score_outcomes(self.client, items, self.scoring, timeout_s=self.timeout_s)
        if len(items) > 1 and all(o.failed and o.computed is None for o in found):
            # The whole request failed: one rollout the service refuses must not fail the others.
            found = [(await score_outcomes(self.client, [i], self.scoring, timeout_s=self.timeout_s))[0]
                     for i in items]  # fmt: skip
        return found


def create_app(
    client: AsyncRewardClient | None = None,
    scoring: Scoring | None = None,
    timeout_s: float | None = 60.0,
    batch_ms: float = 5.0,
) -> Any:
    """The resources server (FastAPI). `timeout_s`: how long one rollout's reward may take
    before it is reported as failed (Gym's own HTTP timeout should be longer)."""
    from contextlib import asynccontextmanager

    from fastapi import Body, FastAPI, HTTPException

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        if "batcher" in state and client is None:  # the client this server made
            await state["batcher"].client.aclose()

    app = FastAPI(title="rlme for NeMo Gym", description=__doc__, lifespan=lifespan)

    def batcher() -> _Batcher:
        if "batcher" not in state:  # made on the server's loop: one pooled client for it
            state["batcher"] = _Batcher(client or AsyncRewardClient(), scoring or Scoring.from_env(),
                                        batch_ms / 1000, timeout_s)  # fmt: skip
        return state["batcher"]

    @app.post("/seed_session")
    async def seed_session(body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:  # noqa: B008
        return {}

    @app.post("/verify")
    async def verify(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        try:  # the body is echoed back: a lone surrogate could not be written out
            check_text(body)
        except ValueError as exc:
            raise HTTPException(422, f"the body {exc}") from None
        response, params = body.get("response"), body.get("responses_create_params") or {}
        if not isinstance(response, dict) or not isinstance(response.get("output") or [], list):
            raise HTTPException(422, "`response` must be an OpenAI Responses object with an `output` list")
        if not isinstance(params, dict) or not isinstance(params.get("input") or "", str | list):
            raise HTTPException(422, "`responses_create_params.input` must be text or a list of messages")
        try:
            item = Item(
                prompt=prompt_of(params),
                response=answer_text(response),
                reference=first_reference(body, REFERENCE_KEYS) if batcher().scoring.send_reference else None,
            )
        except ValueError as exc:  # text the service would refuse: this rollout's reward failed
            return verify_response(body, Outcome(None, f"rlme: the rollout cannot be scored: {exc}"))
        return verify_response(body, await batcher().score(item))

    @app.post("/aggregate_metrics")
    async def aggregate_metrics(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        given = body.get("verify_responses")
        rows = [r for r in given if isinstance(r, dict)] if isinstance(given, list) else []
        scored = [float(r["reward"]) for r in rows
                  if r.get(FAILURE_CLASS) is None and isinstance(r.get("reward"), int | float)]  # fmt: skip
        failed = len(rows) - len(scored)
        metrics = {"mean/reward": sum(scored) / len(scored) if scored else None,
                   "rlme/failed_fraction": failed / len(rows) if rows else 0.0}  # fmt: skip
        return {"group_level_metrics": [], "agent_metrics": metrics, "key_metrics": metrics}

    @app.get("/reverify_mode")
    async def reverify_mode() -> str:
        return "stateless"  # a rollout scored again gets the same reward (the service is deterministic)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="A NeMo Gym resources server scoring through rlme.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one reward may take")
    parser.add_argument("--batch-ms", type=float, default=5.0, help="wait this long to batch verify calls")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(create_app(timeout_s=args.timeout, batch_ms=args.batch_ms), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
