"""Canaries: degenerate rewrites of a run's real responses (pure functions).

The run monitor scores a sample of them with the same questions as the real responses. A
judge that gives a canary about the P(yes) it gives the real response is acquiescing:
saying "Yes" to the form of an answer, or to a claim appended to it, not to its content.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from rlme.client.wire import ChatMessage

# A sentence ends at . ! or ? between a non-space and white space (not in "3.14"), unless it
# closes a list number ("1." at the start of a line), or at a line break.
_SENTENCE_END = re.compile(r"(?<=\S)[.!?][\"')\]]?(?=\s)|\n")
_LIST_NUMBER = re.compile(r"\s*\d{1,3}")
AFFIRMATION = "Yes, this is correct."


def prompt_text(prompt: str | list[ChatMessage]) -> str:
    """The text a reader would call the prompt: a chat prompt's last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m.content for m in prompt if m.role == "user"]
    return users[-1] if users else prompt[-1].content


def first_sentence(response: str) -> str:
    text = response.strip()
    for end in _SENTENCE_END.finditer(text):
        if end.group() == "\n":
            return text[: end.start()].strip()
        line = text[text.rfind("\n", 0, end.start()) + 1 : end.start()]
        if not _LIST_NUMBER.fullmatch(line):
            return text[: end.end()].strip()
    return text


def shuffled(response: str, rng: random.Random) -> str:
    words = response.split()
    rng.shuffle(words)
    return " ".join(words)


REWRITES: dict[str, Callable[[str, str, random.Random], str]] = {
    "empty": lambda prompt, response, rng: "",
    "echo": lambda prompt, response, rng: prompt,
    "first_sentence": lambda prompt, response, rng: first_sentence(response),
    "shuffled": lambda prompt, response, rng: shuffled(response, rng),
    "affirmed": lambda prompt, response, rng: f"{response.rstrip()} {AFFIRMATION}",
}
KINDS = tuple(REWRITES)


def rewrite(kind: str, prompt: str | list[ChatMessage], response: str, rng: random.Random) -> str:
    return REWRITES[kind](prompt_text(prompt), response, rng)
