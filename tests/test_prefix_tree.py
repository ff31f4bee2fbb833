"""Prefix-tree packing: the rows, the mask, and scores equal to scoring from scratch."""

from __future__ import annotations

import pytest

from rlme.client.wire import Item, MetaQuestion
from rlme.service.backends.base import build_task
from rlme.service.backends.prefix_tree import pack, tree_mask
from rlme.service.backends.transformers_backend import TransformersBackend
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings


def test_rows_hold_each_shared_prefix_once() -> None:
    sequences = [(1, 2, 3, 4), (1, 2, 3, 5), (1, 2, 6), (7, 8), (1, 2, 3, 4)]
    [row] = pack(sequences, budget=100)
    # Pre-order walk of the tree: 1 2 3 4 | 5 | 6 | 7 8 (the duplicate adds nothing).
    assert row.tokens == [1, 2, 3, 4, 5, 6, 7, 8]
    assert row.positions == [0, 1, 2, 3, 3, 2, 0, 1]
    assert row.members == [0, 4, 1, 2, 3]  # sorted order
    assert row.shared == [0, 4, 3, 2, 0]
    assert row.answers == [3, 3, 4, 5, 7]
    mask = tree_mask([row], width=9)[0, 0]
    visible = {i: [j for j in range(9) if mask[i, j]] for i in range(9)}
    assert visible[4] == [0, 1, 2, 4]  # 5 sees 1 2 3, not its sibling 4
    assert visible[5] == [0, 1, 5]  # 6 sees 1 2
    assert visible[7] == [6, 7]  # a new tree
    assert visible[8] == [8]  # padding sees itself only


def test_a_full_row_starts_another_and_no_sharing_means_a_row_each() -> None:
    sequences = [(1, 2, 3), (1, 2, 4), (1, 2, 5)]
    rows = pack(sequences, budget=4)
    assert [r.tokens for r in rows] == [[1, 2, 3, 4], [1, 2, 5]]
    assert [r.shared for r in rows] == [[0, 2], [0]]
    assert [r.tokens for r in pack(sequences, budget=100, share=False)] == [list(s) for s in sequences]


def test_the_questions_of_a_response_longer_than_the_budget_share_its_row() -> None:
    response = list(range(10, 30))  # 20 tokens, budget 8
    rows = pack([[*response, 1], [*response, 2], [*response, 3, 3], [5, 6]], budget=8)
    assert [r.tokens for r in rows] == [[5, 6], [*response, 1, 2, 3, 3]]
    assert rows[1].shared == [0, 20, 20]
    too_many = pack([[*response, k] for k in range(300)], budget=8)  # room for 256 more
    assert [len(r.tokens) for r in too_many] == [21 + 256, 21 + 42]


@pytest.mark.model
def test_grpo_request_scores_equal_scoring_from_scratch_with_the_trees_tokens() -> None:
    """4 prompts x 4 responses x 3 questions: scores equal from-scratch (float32, 1e-4),
    and exactly the prefix tree's tokens are computed."""
    settings = Settings()
    shared = TransformersBackend(EvaluatorConfig(dtype="float32"), settings.cache_dir)
    scratch = TransformersBackend(EvaluatorConfig(dtype="float32", prefix_sharing=False), settings.cache_dir)
    shared.setup()
    scratch.setup()
    questions = [
        MetaQuestion(id="correct", text="Is the answer correct?"),
        MetaQuestion(id="polite", text="Is the response polite?"),
        MetaQuestion(id="brief", text="Is the response brief?"),
    ]
    prompts = ["What is 2+2?", "Name a colour.", "Say hi to Ann.", "What is the capital of Peru?"]
    answers = ["4.", "I think it is four.", "Blue, I'd say.", "Hello Ann, nice to meet you!"]
    tasks = [
        build_task(shared.tokenizer, DEFAULT_SYSTEM_PROMPT, Item(prompt=p, response=a), questions)
        for p in prompts
        for a in answers
    ]
    ours, reference = shared.score(tasks), scratch.score(tasks)
    for mine, theirs in zip(ours, reference, strict=True):
        for a, b in zip(mine.scores, theirs.scores, strict=True):
            assert a.logps == pytest.approx(b.logps, abs=1e-4)
    sequences = [s for t in tasks for s in t.sequences]
    tree_tokens = len({tuple(s[:i]) for s in sequences for i in range(1, len(s) + 1)})
    total = sum(len(s) for s in sequences)
    computed = total - sum(r.cached_prompt_tokens for r in ours)
    assert computed == tree_tokens < total / 3
    assert sum(r.cached_prompt_tokens for r in reference) == 0
