"""Tree attention (flex, block-sparse): the closed-form path rule and its block tables equal
the dense tree mask, and scores through it equal the dense mask's and scoring alone."""

from __future__ import annotations

import random

import pytest
import torch

from rlme.client.wire import Item, MetaQuestion
from rlme.service.backends.base import ScoringTask, build_task
from rlme.service.backends.prefix_tree import pack, tree_mask
from rlme.service.backends.transformers_backend import TransformersBackend
from rlme.service.backends.tree_attention import (
    BLOCK,
    block_kinds,
    density,
    padded_width,
    subtree_ends,
    trunk_length,
)
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings


def random_sequences(rng: random.Random, count: int, stem: int, branch: int) -> list[list[int]]:
    """Groups sharing a stem, members sharing part of it: a small GRPO-like forest."""
    out = []
    for g in range(count):
        base = [rng.randrange(50) for _ in range(stem)]
        for _ in range(rng.randint(1, 4)):
            cut = rng.randint(1, stem)
            out.append([g + 100, *base[:cut], *(rng.randrange(50) for _ in range(rng.randint(1, branch)))])
    return out


def path_rule(positions: list[int], width: int) -> torch.Tensor:
    ends = subtree_ends(positions, width)
    q, kv = torch.arange(width)[:, None], torch.arange(width)[None, :]
    return (kv <= q) & (q <= ends[None, :])


def test_subtree_ends_by_hand() -> None:
    # tokens 1 2 3 4 | 5 | 6 | 7 8 at depths 0 1 2 3 3 2 0 1 (test_prefix_tree's row), then padding
    ends = subtree_ends([0, 1, 2, 3, 3, 2, 0, 1], 10).tolist()
    assert ends == [5, 5, 4, 3, 4, 5, 7, 7, 8, 9]


@pytest.mark.parametrize("seed", range(6))
def test_the_path_rule_and_block_tables_equal_the_dense_tree_mask(seed: int) -> None:
    rng = random.Random(seed)
    sequences = random_sequences(rng, count=rng.randint(1, 6), stem=rng.randint(5, 300), branch=200)
    for row in pack(sequences, budget=1024):
        width = padded_width(len(row.tokens))
        dense = tree_mask([row], width)[0, 0]
        assert torch.equal(path_rule(row.positions, width), dense)
        partial, full = block_kinds(subtree_ends(row.positions, width))
        blocks = dense.view(width // BLOCK, BLOCK, width // BLOCK, BLOCK).transpose(1, 2)
        any_true, all_true = blocks.any(-1).any(-1), blocks.all(-1).all(-1)
        assert not (partial & full).any()
        assert torch.equal(full, all_true & ~torch.eye(width // BLOCK, dtype=torch.bool))
        assert torch.equal(partial | full, any_true)  # nothing visible is skipped


def test_density_of_a_chain_and_of_siblings() -> None:
    chain = pack([list(range(1024))], budget=2048)
    siblings = pack([[0] * 16 + [i + 1] * 240 for i in range(8)], budget=2048)
    assert density(chain) == pytest.approx((8 * 9 / 2) / 64)  # the causal lower triangle
    assert density(siblings) < 0.3  # 8 branches of ~2 blocks never see each other


def test_a_trunk_is_the_chain_every_later_token_descends_from() -> None:
    [row] = pack([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 7]], budget=100)  # 1 2 3 4 5 | 6 | 7
    ends = subtree_ends(row.positions, 8)
    assert trunk_length(row.positions, ends) == 3  # 1 2 3; 4 is not an ancestor of 7
    [chain] = pack([[1, 2, 3]], budget=100)
    assert trunk_length(chain.positions, subtree_ends(chain.positions, 4)) == 3


@pytest.mark.model
def test_scores_through_tree_attention_equal_the_dense_mask_and_scoring_alone() -> None:
    """A GRPO-like request (2 prompts x 6 responses x 3 questions; flex plans) and two long
    responses x 3 questions (causal trunk plans): log-probs equal the dense tree mask's and
    from-scratch scoring's (float32, 1e-4); two tree-attention models in one process."""
    settings = Settings()
    configs = {
        "tree": EvaluatorConfig(dtype="float32", tree_attention="flex"),
        "dense": EvaluatorConfig(dtype="float32", tree_attention="dense"),
        # its own tree attention at another width: each model must reach its own kernel
        "scratch": EvaluatorConfig(
            dtype="float32", tree_attention="flex", prefix_sharing=False, max_forward_tokens=1024
        ),
    }
    backends = {mode: TransformersBackend(config, settings.cache_dir) for mode, config in configs.items()}
    for backend in backends.values():
        backend.setup()
    tree = backends["tree"]._tree
    assert tree is not None and tree.kernel is not None, "the kernel compiles on this machine (CI's)"
    names = {b._model.config._attn_implementation for b in (backends["tree"], backends["scratch"])}
    assert len(names) == 2
    questions = [
        MetaQuestion(id="correct", text="Is the answer correct?"),
        MetaQuestion(id="steps", text="Does every step follow from the one before?"),
        MetaQuestion(id="polite", text="Is the response polite?"),
    ]
    rng, tokenizer = random.Random(0), backends["dense"].tokenizer

    def task(prompt: str, steps: int) -> ScoringTask:
        answer = " ".join(f"Step {s}: {rng.randint(1, 99)} + {rng.randint(1, 99)}." for s in range(steps))
        return build_task(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(prompt=prompt, response=answer), questions)

    grpo = [
        task(f"Problem {p}: {rng.randint(2, 9)} apples a day. " * 8, 12 + r)
        for p in range(2)
        for r in range(6)
    ]
    long = [task("Add these up, step by step.", 90) for _ in range(2)]
    for tasks, kind in ((grpo, "flex"), (long, "trunk")):
        rows = pack([s for t in tasks for s in t.sequences], backends["tree"].max_forward_tokens)
        plans = tree.plans(rows, max(len(r.tokens) for r in rows))
        if kind == "flex":
            assert all(p.flex is not None for p in plans), "this request's rows are sparse enough for flex"
        else:
            assert all(p.flex is None and p.trunk > 500 for p in plans), [p.trunk for p in plans]
        results = {mode: backend.score(tasks) for mode, backend in backends.items()}
        for mode in ("dense", "scratch"):
            for ours, theirs in zip(results["tree"], results[mode], strict=True):
                for a, b in zip(ours.scores, theirs.scores, strict=True):
                    assert a.logps == pytest.approx(b.logps, abs=1e-4), (kind, mode)
