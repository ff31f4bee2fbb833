"""Run by tests/test_adapters_verifiers.py in a venv holding only verifiers 0.4.0 and the rlme
client (`make install-frameworks`): rlme's reward functions plugged into a real verifiers v1
`Task` through its config, scored by verifiers' own `Task.score` on a real `Trace`, against
the live service at $RLME_BASE_URL; a failure makes the trace's scoring a TaskError, so the
trace has `has_error` and prime-rl leaves it out of training.

    RLME_BASE_URL=http://127.0.0.1:8000 python tests/verifiers_check.py
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import verifiers.v1 as vf
from verifiers.v1.graph import MessageNode
from verifiers.v1.types import AssistantMessage, UserMessage

from rlme.client import RewardClient

QUESTIONS = [{"id": "correct", "text": "Is the answer correct?"}]


class MathData(vf.TaskData):
    answer: str


class MathTask(vf.Task[MathData]):
    pass


def trace_for(task: MathTask, question: str, reply: str) -> vf.Trace:
    trace = vf.Trace[MathData, vf.State, vf.AgentConfig](
        task=vf.TraceTask[MathData](type="MathTask", data=task.data),
        agent=vf.AgentInfo(config=vf.AgentConfig()),
        nodes=[
            MessageNode(message=UserMessage(content=question)),
            MessageNode(parent=0, message=AssistantMessage(content=reply), sampled=True),
        ],
    )
    trace.ok = True  # as a finished rollout's
    return trace


def make_task(question: str, answer: str, fn: str = "rlme.client.adapters.verifiers:reward") -> MathTask:
    rewards = {"rlme": vf.RewardFunctionConfig(fn=fn, weight=1.0)}
    return MathTask(MathData(prompt=question, answer=answer), config=vf.TaskConfig(rewards=rewards))


async def main() -> None:
    os.environ["RLME_QUESTIONS"] = json.dumps(QUESTIONS)
    base = os.environ["RLME_BASE_URL"]
    with RewardClient(base_url=base) as client:
        item = {"prompt": "What is 2+2?", "response": "4", "reference": "4"}
        want = client.rewards([item], questions=QUESTIONS)

    task = make_task("What is 2+2?", "4")
    trace = trace_for(task, "What is 2+2?", "4")
    await task.score(trace)
    got = trace.rewards["rlme"]
    assert abs(got.score - want.rewards[0]) < 1e-6, (got, want.rewards)
    assert abs(trace.reward - want.rewards[0]) < 1e-6 and not trace.has_error

    judged = make_task("What is 2+2?", "4", fn="rlme.client.adapters.verifiers:preference")
    judged_trace = trace_for(judged, "What is 2+2?", "4")
    await judged.score(judged_trace)
    assert judged_trace.rewards["rlme"].score == 0.5  # the reply is the answer: both orders cancel
    print("verifiers check: reward", got.score, "preference", judged_trace.rewards["rlme"].score)


async def service_down() -> None:
    """In a loop of its own: the adapter keeps one client per event loop."""
    with socket.socket() as s:  # a port nothing listens on: the service is down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    os.environ["RLME_BASE_URL"], os.environ["RLME_TIMEOUT_S"] = down, "5"
    failing = make_task("What is 2+2?", "4")
    failed = trace_for(failing, "What is 2+2?", "4")
    try:
        await failing.score(failed)
    except vf.TaskError as exc:  # verifiers' own error: its rollout records it on the trace
        failed.record_error(exc)
        assert "rlme" in str(exc)
    else:
        raise AssertionError("a failed rlme reward must fail the trace's scoring, not score 0")
    assert failed.has_error and failed.rewards.get("rlme") is None  # no number recorded, not a 0
    print("verifiers check passed")


if __name__ == "__main__":
    asyncio.run(main())
    asyncio.run(service_down())
    sys.exit(0)
