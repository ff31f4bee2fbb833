"""How an (item, meta-question) becomes the evaluator's input, and which tokens mean Yes/No.

Layout: the evaluator's chat template over [system, user], where the user turn shows
the prompt, the response, the reference (if any) and, last, the meta-question. Every
question of an item therefore shares the same leading tokens, which the backends compute
once (prefix sharing in transformers, prefix caching in vLLM).

We tokenize each full text from scratch and find the shared prefix as the longest common
token prefix, so the tokens scored with prefix sharing are exactly the tokens scored
without it, whatever the tokenizer does at the question boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rlme.client.wire import ChatMessage, Item, MetaQuestion

ANSWER_INSTRUCTION = "Answer with Yes or No."


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer we use."""

    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


def prompt_as_text(prompt: str | list[ChatMessage]) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.role}: {m.content}" for m in prompt)


def user_message(item: Item, question: MetaQuestion) -> str:
    parts = [f"Prompt:\n{prompt_as_text(item.prompt)}", f"Response:\n{item.response}"]
    if item.reference is not None:
        parts.append(f"Reference (ground truth or context):\n{item.reference}")
    parts.append(f"Question: {question.text}\n{ANSWER_INSTRUCTION}")
    return "\n\n".join(parts)


def render(tokenizer: Tokenizer, system_prompt: str, item: Item, question: MetaQuestion) -> str:
    """The evaluator's full input text, ending where its Yes/No answer would begin."""
    user = user_message(item, question)
    if not tokenizer.chat_template:
        return f"{system_prompt}\n\n{user}\nAnswer:"
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates without a system role (e.g. Gemma) reject it
        merged = [{"role": "user", "content": f"{system_prompt}\n\n{user}"}]
        text = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return str(text)


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    # The chat template already wrote any BOS; adding special tokens would double it.
    return list(tokenizer.encode(text, add_special_tokens=False))


def common_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all sequences."""
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        token = first[i]
        if any(s[i] != token for s in sequences[1:]):
            return i
    return n


@dataclass(frozen=True)
class LabelTokens:
    """Token ids whose probabilities are summed into P(yes) and P(no)."""

    yes_ids: tuple[int, ...]
    no_ids: tuple[int, ...]
    yes_tokens: tuple[str, ...]
    no_tokens: tuple[str, ...]


def _variants(word: str) -> list[str]:
    # No all-caps forms: "NO" is one token where "YES" is two in many vocabularies,
    # which would give one label more variants than the other.
    forms = dict.fromkeys([word, word.lower(), word.capitalize()])
    return [v for form in forms for v in (form, " " + form)]


def label_tokens(tokenizer: Tokenizer, yes_words: list[str], no_words: list[str]) -> LabelTokens:
    """Single-token variants ("Yes", " Yes", "yes", ...) of the label words.

    Raises ValueError at start-up if a configured word is not one token by itself, since
    its probability could not then be read from one next-token distribution.
    """

    def ids_for(words: list[str]) -> tuple[int, ...]:
        ids: list[int] = []
        for word in words:
            if len(encode(tokenizer, word)) != 1:
                raise ValueError(
                    f"label word {word!r} is {len(encode(tokenizer, word))} tokens for this "
                    "tokenizer; choose yes_words/no_words that are single tokens"
                )
            for variant in _variants(word):
                variant_ids = encode(tokenizer, variant)
                if len(variant_ids) == 1 and variant_ids[0] not in ids:
                    ids.append(variant_ids[0])
        return tuple(ids)

    yes_ids, no_ids = ids_for(yes_words), ids_for(no_words)
    if set(yes_ids) & set(no_ids):
        raise ValueError(f"yes_words {yes_words} and no_words {no_words} share a token")
    return LabelTokens(
        yes_ids=yes_ids,
        no_ids=no_ids,
        yes_tokens=tuple(tokenizer.convert_ids_to_tokens(list(yes_ids))),
        no_tokens=tuple(tokenizer.convert_ids_to_tokens(list(no_ids))),
    )
