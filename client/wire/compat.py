"""The framework-compatible routes: OpenRLHF's remote reward model (`POST /get_reward`) and
slime's `--rm-url` (`POST /slime/reward`), in those frameworks' own shapes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from rlme.client.wire.base import _Wire
from rlme.client.wire.rewards import ChatMessage


# OpenRLHF's remote reward model contract (`--reward.remote_url`): query = prompt + response.
class OpenRLHFRewardRequest(_Wire):
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list[str | None] | None = None
    metas: list[object] | None = Field(
        default=None, description="Sent by OpenRLHF 0.11+ (per-sample metadata); accepted, not read."
    )


class OpenRLHFRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class SlimeRewardRequest(_Wire):
    # slime sends a chat list when it does not apply the chat template itself, and the
    # dataset's label as it is (a number is common for math data).
    prompt: str | list[ChatMessage]
    response: str
    label: str | int | float | None = None
