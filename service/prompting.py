"""How an (item, meta-question) becomes the evaluator's input, and which tokens mean Yes/No.

Layout: the evaluator's chat template over [system, user], where the user turn shows
the prompt, the response and the reference (if any), each inside its own tags, then,
last, the meta-question. Every question of an item therefore shares the same leading
tokens, which the backends compute once (prefix sharing in transformers, prefix caching
in vLLM).

Caller text is data, never control: it is tokenised so that special-token strings in it
(`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, ...) become ordinary text tokens, and the
only control tokens in an evaluation are the ones the chat template itself writes
(transformers' `apply_chat_template(..., sanitize_control_tokens=True)`). Tags that the
caller's text could use to close its own section (`</response>`) are escaped, so text
that imitates the layout stays inside the section it was written in. Every backend
receives these token ids; no server re-tokenises caller text.

We tokenize each full evaluation from scratch and find the shared prefix as the longest
common token prefix, so the tokens scored with prefix sharing are exactly the tokens
scored without it, whatever the tokenizer does at the question boundary.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jinja2.exceptions import TemplateError

from rlme.client.wire import ChatMessage, Item, MetaQuestion

ANSWER_INSTRUCTION = "Answer with Yes or No."

# An evaluation every evaluator should answer with a label: start-up and replica checks.
SAMPLE_ITEM = Item(prompt="What is 2+2?", response="2 + 2 = 4. The answer is 4.")
SAMPLE_QUESTION = MetaQuestion(id="check", text="Is the answer correct?")

# The sections of the user turn. Caller text that opens or closes one of them is escaped.
SECTION_TAGS = ("prompt", "response", "reference", "response_a", "response_b", "judgment_a", "judgment_b")
_FORGED_TAG = re.compile(r"<(/?)\s*(" + "|".join(SECTION_TAGS) + r")(\s*)>", re.IGNORECASE)

# A fast tokenizer switches "split special tokens" on a state it shares between calls, so
# two threads tokenizing at once could read each other's setting: one lock serialises them.
_TOKENIZE_LOCK = threading.Lock()


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer we use."""

    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...
    def encode(self, text: str, add_special_tokens: bool = ..., **kwargs: Any) -> list[int]: ...
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


def prompt_as_text(prompt: str | list[ChatMessage]) -> str:
    """A chat prompt is shown as a quoted conversation, never as turns of the evaluator's own."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.role}: {m.content}" for m in prompt)


def escape_sections(text: str) -> str:
    """`</response>` in caller text becomes `&lt;/response&gt;`: it cannot end its section."""
    return _FORGED_TAG.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}{m.group(3)}&gt;", text)


def section(tag: str, text: str) -> str:
    return f"<{tag}>\n{escape_sections(text)}\n</{tag}>"


def user_message(item: Item, question: MetaQuestion) -> str:
    parts = [section("prompt", prompt_as_text(item.prompt)), section("response", item.response)]
    if item.reference is not None:
        parts.append(section("reference", item.reference))
    parts.append(f"Question: {question.text}\n{ANSWER_INSTRUCTION}")
    return "\n\n".join(parts)


def _conversation(system_prompt: str, user: str, merged: bool) -> list[dict[str, str]]:
    if merged:  # templates without a system role (e.g. Gemma) get it at the top of the user turn
        return [{"role": "user", "content": f"{system_prompt}\n\n{user}"}]
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def _apply_template(
    tokenizer: Tokenizer, system_prompt: str, user: str, template_kwargs: Mapping[str, Any], **kwargs: Any
) -> Any:
    for merged in (False, True):
        try:
            return tokenizer.apply_chat_template(
                _conversation(system_prompt, user, merged),
                add_generation_prompt=True,
                **kwargs,
                **template_kwargs,
            )
        except TemplateError:  # raised by templates that refuse a system message
            if merged:
                raise
    raise AssertionError("unreachable")


def render_turn(
    tokenizer: Tokenizer, system_prompt: str, user: str, template_kwargs: Mapping[str, Any] | None = None
) -> str:
    """The evaluator's input as text (for people and logs; the backends get `tokenize_turn`)."""
    if not tokenizer.chat_template:
        return f"{system_prompt}\n\n{user}\nAnswer:"
    return str(_apply_template(tokenizer, system_prompt, user, template_kwargs or {}, tokenize=False))


def tokenize_turn(
    tokenizer: Tokenizer, system_prompt: str, user: str, template_kwargs: Mapping[str, Any] | None = None
) -> list[int]:
    """Token ids of [system, user] + the generation prompt, control tokens in `user` as text.

    The system prompt is the operator's; `user` holds caller text. Without a chat template
    (base models) the layout is plain text and only `user` is tokenised with special
    tokens split.
    """
    with _TOKENIZE_LOCK:
        if not tokenizer.chat_template:
            return [
                *tokenizer.encode(f"{system_prompt}\n\n", add_special_tokens=False),
                *tokenizer.encode(user, add_special_tokens=False, split_special_tokens=True),
                *tokenizer.encode("\nAnswer:", add_special_tokens=False),
            ]
        ids = _apply_template(
            tokenizer,
            system_prompt,
            user,
            template_kwargs or {},
            tokenize=True,
            return_dict=False,
            sanitize_control_tokens=True,
        )
    return list(ids)


def render(
    tokenizer: Tokenizer,
    system_prompt: str,
    item: Item,
    question: MetaQuestion,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The evaluator's full input text, ending where its Yes/No answer would begin."""
    return render_turn(tokenizer, system_prompt, user_message(item, question), template_kwargs)


def tokenize(
    tokenizer: Tokenizer,
    system_prompt: str,
    item: Item,
    question: MetaQuestion,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[int]:
    """The evaluation's token ids, caller text as text (see the module docstring)."""
    return tokenize_turn(tokenizer, system_prompt, user_message(item, question), template_kwargs)


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Untrusted text (caller or model written) on its own: special-token strings as text."""
    with _TOKENIZE_LOCK:
        return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Trusted text (our own layout, label words): special-token strings stay special.

    The chat template already wrote any BOS; adding special tokens would double it.
    """
    with _TOKENIZE_LOCK:
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
