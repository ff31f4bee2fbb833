"""An in-memory stand-in for the rlme service, for tests that must not touch a network.

    fake = FakeRewardService(reward=lambda item: float(len(item.response)))
    with fake.client() as client:
        assert client.rewards([{"prompt": "p", "response": "abc"}], rubric="x").rewards == [3.0]
    assert fake.requests[0].rubric == "x"

It answers POST /v1/rewards, GET /health, /v1/rubrics and /v1/evaluators through
`httpx.MockTransport`, validates requests with the same wire models as the real
service, and records what it received.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx

from .client import AsyncRewardClient, RewardClient
from .wire import (
    EvaluatorInfo,
    EvaluatorList,
    Health,
    Item,
    ItemResult,
    QuestionScore,
    RewardRequest,
    RewardResponse,
    RubricList,
    Usage,
)

__all__ = ["FakeRewardService"]


class FakeRewardService:
    """A `httpx.MockTransport` handler that scores items with a Python function.

    Every score reports `p_yes` (strictly between 0 and 1) for each question and evaluator:
    a number, or a function of the item, where None stands for an evaluator that did not
    answer yes/no (`low_label_mass`).
    """

    def __init__(
        self,
        reward: Callable[[Item], float] = lambda item: 0.0,
        p_yes: float | Callable[[Item], float | None] = 0.5,
    ):
        self.reward = reward
        self.p_yes = p_yes
        self.requests: list[RewardRequest] = []  # every valid POST /v1/rewards body
        self.http_requests: list[httpx.Request] = []  # everything, headers included

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.http_requests.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/v1/rewards":
            return self._rewards(request)
        if request.method == "GET" and path == "/health":
            return _json(200, Health(status="ok", evaluators={"default": "ok"}))
        if request.method == "GET" and path == "/v1/rubrics":
            return _json(200, RubricList(rubrics=[]))
        if request.method == "GET" and path == "/v1/evaluators":
            info = EvaluatorInfo(
                name="default", backend="fake", model="fake", loaded=True,
                yes_tokens=["Yes"], no_tokens=["No"],
            )  # fmt: skip
            return _json(200, EvaluatorList(default="default", evaluators=[info]))
        return _error(404, "not_found", f"no route {request.method} {path}")

    def client(self, **kwargs: Any) -> RewardClient:
        """A RewardClient wired to this fake (closing it closes the mock transport too)."""
        client = RewardClient(http_client=httpx.Client(transport=httpx.MockTransport(self)), **kwargs)
        client._owns_http = True
        return client

    def async_client(self, **kwargs: Any) -> AsyncRewardClient:
        transport = httpx.MockTransport(self)
        client = AsyncRewardClient(http_client=httpx.AsyncClient(transport=transport), **kwargs)
        client._owns_http = True
        return client

    def _rewards(self, request: httpx.Request) -> httpx.Response:
        try:
            body = RewardRequest.model_validate_json(request.content)
        except ValueError as exc:
            return _error(422, "invalid_request", str(exc))
        self.requests.append(body)
        questions = [(q.id, q.weight) for q in body.questions or []] or [(body.rubric or "", 1.0)]
        evaluators = [(e.name, e.weight) for e in body.evaluators or []] or [("default", 1.0)]
        results = [
            ItemResult(id=item.id, reward=self.reward(item), scores=self._scores(item, evaluators, questions))
            for item in body.items
        ]
        usage = Usage(
            evaluations=len(body.items) * len(questions) * len(evaluators),
            prompt_tokens=sum(len(item.response) for item in body.items),
            cached_prompt_tokens=0,
        )
        answer = RewardResponse(rewards=[r.reward for r in results], results=results, usage=usage)
        return _json(200, answer)

    def _scores(
        self, item: Item, evaluators: list[tuple[str, float]], questions: list[tuple[str, float]]
    ) -> list[QuestionScore]:
        p_yes = self.p_yes(item) if callable(self.p_yes) else self.p_yes
        low = p_yes is None
        p_yes = 0.5 if p_yes is None else p_yes
        mass = 0.001 if low else 1.0
        logp_yes, logp_no = math.log(p_yes * mass), math.log((1 - p_yes) * mass)
        return [
            QuestionScore(
                evaluator=evaluator,
                question=question,
                p_yes=p_yes,
                logp_yes=logp_yes,
                logp_no=logp_no,
                weight=weight,
                evaluator_weight=evaluator_weight,
                label_mass=mass,
                low_label_mass=low,
            )  # fmt: skip
            for evaluator, evaluator_weight in evaluators
            for question, weight in questions
        ]


def _json(status: int, model: Any) -> httpx.Response:
    return httpx.Response(status, content=model.model_dump_json(), headers=_JSON)


def _error(status: int, code: str, message: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "retryable": False}}
    return httpx.Response(status, json=body)


_JSON = {"content-type": "application/json"}
