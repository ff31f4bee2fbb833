"""Prompt rendering, shared prefixes and label tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from rlme.client.wire import ChatMessage, Item, MetaQuestion
from rlme.service.prompting import common_prefix_len, encode, label_tokens, render, tokenize

QUESTION = MetaQuestion(id="correct", text="Is the answer correct?")


class TemplatelessTokenizer:
    """Test double: a tokenizer without a chat template; one token per character."""

    chat_template = None

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        raise AssertionError("must not be called without a template")

    def encode(self, text: str, add_special_tokens: bool = False, **kwargs: Any) -> list[int]:
        return [ord(c) for c in text]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [chr(i) for i in ids]


def test_render_without_template_puts_question_last() -> None:
    item = Item(prompt="What is 2+2?", response="4", reference="4")
    text = render(TemplatelessTokenizer(), "SYS", item, QUESTION)
    assert text == (
        "SYS\n\n<prompt>\nWhat is 2+2?\n</prompt>\n\n<response>\n4\n</response>\n\n"
        "<reference>\n4\n</reference>\n\n"
        "Question: Is the answer correct?\nAnswer with Yes or No.\nAnswer:"
    )
    assert tokenize(TemplatelessTokenizer(), "SYS", item, QUESTION) == [ord(c) for c in text]


def test_render_with_smollm2_chat_template(model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    chat = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    text = render(tokenizer, "SYS", Item(prompt=chat, response="Hello!"), QUESTION)
    assert text == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
        "<prompt>\nsystem: Be brief.\nuser: Hi\n</prompt>\n\n<response>\nHello!\n</response>\n\n"
        "Question: Is the answer correct?\nAnswer with Yes or No.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Benign text tokenises the same whole or in pieces.
    item = Item(prompt=chat, response="Hello!")
    assert tokenize(tokenizer, "SYS", item, QUESTION) == tokenizer.encode(text, add_special_tokens=False)


def test_chat_template_kwargs_reach_the_template(model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "<|im_start|>assistant\n{% if not enable_thinking %}<think></think>{% endif %}"
    )
    item = Item(prompt="Hi", response="Hello!")
    assert render(tokenizer, "SYS", item, QUESTION, {"enable_thinking": True}).endswith("assistant\n")
    assert render(tokenizer, "SYS", item, QUESTION, {"enable_thinking": False}).endswith("<think></think>")


def test_common_prefix_len() -> None:
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[5, 6], [5, 6]]) == 2
    assert common_prefix_len([[1], [2]]) == 0


def test_label_tokens_of_smollm2(model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    labels = label_tokens(tokenizer, ["Yes"], ["No"])
    assert labels.yes_tokens == ("Yes", "ĠYes", "yes", "Ġyes")
    assert labels.no_tokens == ("No", "ĠNo", "no", "Ġno")
    assert labels.yes_ids == tuple(tokenizer.convert_tokens_to_ids(list(labels.yes_tokens)))


def test_multi_token_label_fails_with_a_fix(model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    with pytest.raises(ValueError, match="single tokens"):
        label_tokens(tokenizer, ["Absolutely"], ["No"])
    with pytest.raises(ValueError, match="share a token"):
        label_tokens(tokenizer, ["Yes"], ["yes"])


def test_encode_adds_no_special_tokens() -> None:
    assert encode(TemplatelessTokenizer(), "ab") == [97, 98]
