"""The base of every request model on the wire, and the limits no server configuration lifts.

Every request model is strict: unknown fields, NaN and Infinity are refused, and so is a
lone UTF-16 surrogate in any string (JSON can escape one, `"\\ud800"`, but it is not a
character: no tokenizer can encode it, and no JSON encoder can answer with it). The
service answers such a request with a 422 that names the field; it never replaces the
text, because a reward for other text than the caller sent would be a made-up number.

Limits that depend on the server (how many items, how long a text) are checked by the
service; the bounds here hold for every server: 64-bit integers, and stop strings,
labels and names short enough that no per-token work on them can be slow.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

MAX_INT64 = 2**63 - 1  # seeds and steps are stored and hashed as signed 64-bit integers
MAX_NAME_CHARS = 128  # ids, names of questions, evaluators, rubrics, judges
MAX_STOP_CHARS = 64  # a stop string is matched against every decoded token
MAX_LABEL_CHARS = 32  # a verdict label is one token
MAX_QUESTION_CHARS = 4000  # a meta-question is rendered into every item's prompt
MAX_WEIGHT = 1e6  # weights times log p floored at -20 stay far from overflowing a float

_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_MESSAGE = (
    "contains a lone UTF-16 surrogate: it is not text; send valid UTF-8 (or replace it with U+FFFD)"
)


def lone_surrogate_at(text: str) -> int | None:
    """The index of the first lone surrogate in `text`, or None (the usual case, fast)."""
    if text.isascii():
        return None
    found = _SURROGATE.search(text)
    return None if found is None else found.start()


def check_text(value: Any, where: str = "") -> None:
    if isinstance(value, str):
        at = lone_surrogate_at(value)
        if at is not None:
            raise ValueError(f"{where}{SURROGATE_MESSAGE} (U+{ord(value[at]):04X} at character {at})")
    elif isinstance(value, list | tuple):
        for i, element in enumerate(value):
            check_text(element, f"{where}[{i}] " if not where else f"{where.rstrip()}[{i}] ")
    elif isinstance(value, dict):
        for key, element in value.items():
            check_text(key, "a key ")
            check_text(element, f"[{key!r}] ")


class _Wire(BaseModel):
    # NaN and Infinity are valid JSON for Python's parser; they are never a valid weight.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _text_is_text(cls, value: Any) -> Any:
        check_text(value)
        return value
