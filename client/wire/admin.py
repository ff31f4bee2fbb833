"""The admin contract: reloading an evaluator's weights (RLME's live self)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from rlme.client.wire.base import _Wire


class ReloadRequest(_Wire):
    model: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="New weights: a model folder or .gguf visible to the service; "
        "default: reload the configured path (e.g. after overwriting it in place).",
    )


class ReloadResponse(BaseModel):
    evaluator: str
    model: str
    generation: int = Field(description="Counts reloads since start.")
