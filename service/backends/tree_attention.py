"""Block-sparse attention over packed prefix-tree rows (flex attention), beside the dense mask.

A packed row (prefix_tree.py) is a pre-order walk of the prefix tree, so the keys a query
may attend to have a closed form: key j is on query i's path iff j <= i <= end[j], where
end[j] is the last row index of j's subtree (the token before the first later token whose
depth is not greater than j's). The mask is one integer a token, O(L) memory, instead of
the dense (L x L) boolean of `tree_mask`; at the granularity of flex attention's 128 x 128
blocks, the squares between sibling branches (the responses of a group, the questions of
a response) are never computed, where SDPA with a dense mask computes every one.

Block classes, for query block qb and key block kb:
- kb > qb: empty;
- kb < qb: full iff every key of kb reaches the whole query block (min end >= its last
  query), partial iff some key reaches its first query (max end >= its first query);
- kb == qb: partial (the causal diagonal), evaluated token by token by the rule above.

Each row attends by one of two plans (`TreeAttention.plans`, per row):
- flex: where at most DENSITY of the row's blocks are computed. Flex's CPU kernel runs
  a block at about half the speed of SDPA's fused kernel (measured on 2 cores), so
  it pays where siblings abound: a GRPO row of many ~200-token branches computes about a
  third of its blocks, and its attention runs ~2x faster than with the dense mask;
- trunk: otherwise. The leading chain every later token descends from (system text and
  prompt; in a row that is one long response, the response too) attends by SDPA's causal
  kernel, which skips the upper triangle; only the rest of the row (a long response's
  questions) uses a dense mask, of its own rows only. A row that is one long response
  with its questions then costs about half the attention of the dense mask.

One compiled shape: each row is attended alone (batch 1), its queries, keys and values
zero-padded to `width` (the backend's max_forward_tokens) inside the attention call only,
so the linear layers never see the padding and Inductor compiles once per process
(seconds at start-up, `compile`; cached on disk by Inductor). The kernel needs a C++
compiler at run time; where it cannot be built the trunk plan is used for every row.

Memory for 8 responses of 4,000 tokens x 3 questions (CPU, max_forward_tokens 2,048):
each response and its questions form one row of ~4,100 tokens (prefix_tree.LONG_ROW_ROOM),
one row a forward pass, trunk plan: the causal kernel keeps O(L) state, the tail mask is
(W - trunk) x W booleans (~50 x 4,100 = 200 KB), activations ~W x (hidden + MLP) floats
a layer. The dense mask of the same row would be 4,100^2 booleans = 17 MB; on a GPU
(rows of up to 32,768 tokens) a flex row's mask is 4 bytes a token plus 2 x (W/128)^2
int32 block tables (512 KiB), where a dense mask is 1 GiB.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlme.service.backends.prefix_tree import PackedRow

log = logging.getLogger(__name__)

BLOCK = 128
DENSITY = 0.5  # flex when at most this share of a row's blocks is computed (measured)
NAME = "rlme_tree"  # the attention implementations the models are switched to: NAME-<n>
_INSTANCES = itertools.count()
PLANS = "rlme_tree_plans"  # the keyword that carries one Plan a row through the model


def padded_width(tokens: int) -> int:
    """`tokens` rounded up to whole blocks."""
    return -(-tokens // BLOCK) * BLOCK


def subtree_ends(positions: Sequence[int], width: int) -> torch.Tensor:
    """end[j] for every column of a row of `positions` (tree depths) padded to `width`;
    a padding column ends at itself, so it attends only to itself."""
    end = torch.arange(width)
    stack: list[int] = []
    for k, depth in enumerate(positions):
        while stack and positions[stack[-1]] >= depth:
            end[stack.pop()] = k - 1
        stack.append(k)
    for k in stack:
        end[k] = len(positions) - 1
    return end


def block_kinds(ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) boolean (Q, K) block tables of one row's `ends` (a multiple of BLOCK)."""
    blocks = ends.numel() // BLOCK
    by_block = ends.view(blocks, BLOCK)
    first_query = torch.arange(blocks) * BLOCK
    before = torch.arange(blocks)[None, :] < torch.arange(blocks)[:, None]  # (Q, K): kb < qb
    reach_all = by_block.min(-1).values[None, :] >= (first_query + BLOCK - 1)[:, None]
    reach_any = by_block.max(-1).values[None, :] >= first_query[:, None]
    full = before & reach_all
    partial = (before & reach_any & ~reach_all) | torch.eye(blocks, dtype=torch.bool)
    return partial, full


def computed_blocks(ends: torch.Tensor) -> int:
    """Blocks tree attention computes (partial or full) for a row's `ends`."""
    partial, full = block_kinds(ends)
    return int(partial.sum() + full.sum())


def density(rows: Sequence[PackedRow]) -> float:
    """Share of all the rows' blocks that tree attention computes (partial or full)."""
    computed = total = 0
    for row in rows:
        width = padded_width(len(row.tokens))
        computed += computed_blocks(subtree_ends(row.positions, width))
        total += (width // BLOCK) ** 2
    return computed / max(total, 1)


def row_mask(ends: torch.Tensor, device: torch.device | None = None) -> Any:
    """The BlockMask of one row from its `ends` (a multiple of BLOCK), shared by every head."""
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = block_kinds(ends)
    ends = ends.to(device)

    def table(kinds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = kinds.sum(-1, dtype=torch.int32)[None, None]  # (1, 1, Q)
        order = torch.argsort((~kinds).to(torch.int8), dim=-1, stable=True)  # that kind first
        return counts.to(device), order.to(torch.int32)[None, None].to(device)  # (1, 1, Q, K)

    def on_path(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (kv <= q) & (q <= ends[kv])

    (partial_counts, partial_index), (full_counts, full_index) = table(partial), table(full)
    return BlockMask.from_kv_blocks(
        partial_counts, partial_index, full_counts, full_index, BLOCK_SIZE=BLOCK, mask_mod=on_path
    )


def path_mask(ends: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Dense (1, 1, W - start, W) boolean mask of queries start.. of a row (the path rule)."""
    width = ends.numel()
    query, key = torch.arange(start, width)[:, None], torch.arange(width)[None, :]
    return ((key <= query) & (query <= ends[None, :]))[None, None]


def trunk_length(positions: Sequence[int], ends: torch.Tensor) -> int:
    """Leading tokens that form a chain every later token descends from (the system text and
    prompt; in a row that is one long response, the response too): plain causal attention."""
    last, t = len(positions) - 1, 0
    while t < len(positions) and positions[t] == t and int(ends[t]) == last:
        t += 1
    return t


@dataclass
class Plan:
    """How one row attends: `flex` (a BlockMask), or causal over the first `trunk` tokens and
    the dense path mask (`tail`) for the rest (trunk 0: the whole row dense)."""

    flex: Any = None
    trunk: int = 0
    tail: torch.Tensor | None = None


def trunk_then_tail(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, scale: float | None, gqa: bool
) -> torch.Tensor:
    """One row by its trunk plan: causal SDPA over the trunk, the tail's rows with its mask."""
    sdpa, t, length = torch.nn.functional.scaled_dot_product_attention, plan.trunk, q.shape[2]
    parts = []
    if t:
        parts.append(sdpa(q[:, :, :t], k[:, :, :t], v[:, :, :t], is_causal=True, scale=scale, enable_gqa=gqa))
    if t < length:
        parts.append(sdpa(q[:, :, t:], k, v, attn_mask=plan.tail, scale=scale, enable_gqa=gqa))
    return torch.cat(parts, dim=2)


class TreeAttention:
    """Per-row plans for packed rows of at most `width` tokens, and the attention function."""

    def __init__(self, width: int, kernel: Any) -> None:
        self.width = width
        self.kernel = kernel  # torch.compile(flex_attention) for (1, H, width, D), or None

    @classmethod
    def create(cls, model: Any, width: int, flex: bool) -> TreeAttention:
        """Switch `model` to tree attention, with the flex kernel compiled if `flex` and it can be
        built here (a C++ compiler, a supported build); without it, trunk and dense plans only."""
        tree = cls(width, None)
        if flex:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # torch's own, while compiling
                    tree.compile(model)
            except Exception as error:  # noqa: BLE001 - any failure means: no flex plans
                tree.kernel = None
                log.warning("flex attention unavailable (%s: %s)", type(error).__name__, error)
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        # One name an instance: the registry is global, and two evaluators (or a reload
        # beside the old weights) must each reach their own kernel and width.
        name = f"{NAME}-{next(_INSTANCES)}"
        AttentionInterface.register(name, tree.attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)  # generation builds SDPA masks
        model.config._attn_implementation = name
        return tree

    def compile(self, model: Any) -> None:
        """Compile now (and check the kernel runs), not on the first request."""
        from torch.nn.attention.flex_attention import flex_attention

        self.kernel = torch.compile(flex_attention, dynamic=False)
        config = model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        # the scale the layers pass (a float the compiled graph is specialised on)
        scales = (getattr(m, "scaling", None) for m in model.modules())
        scale = next((s for s in scales if isinstance(s, float)), head_dim**-0.5)
        query = torch.zeros((1, heads, 3, head_dim), dtype=model.dtype, device=model.device)
        key = torch.zeros((1, kv_heads, 3, head_dim), dtype=model.dtype, device=model.device)
        with torch.inference_mode():  # as scoring runs: the mask's tensors must match it
            plan = Plan(flex=row_mask(subtree_ends([0, 1, 1], self.width), model.device))
            out, _ = self.attention(None, query, key, key, None, scale, **{PLANS: [plan]})
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("the compiled kernel returned non-finite values")

    def plans(self, rows: Sequence[PackedRow], width: int, device: torch.device | None = None) -> list[Plan]:
        """Flex where at most DENSITY of a row's blocks is computed; else a causal trunk and a
        dense tail (a row of one long response: the tail is its questions)."""
        plans = []
        for row in rows:
            # once a row, at the widest use; a narrower prefix of it is the same row at that
            # width (padding columns end at themselves)
            ends = subtree_ends(row.positions, max(width, self.width))
            if self.kernel is not None and len(row.tokens) <= self.width:
                own = padded_width(len(row.tokens))
                if computed_blocks(ends[:own]) <= DENSITY * (own // BLOCK) ** 2:
                    plans.append(Plan(flex=row_mask(ends[: self.width], device)))
                    continue
            trunk = trunk_length(row.positions, ends)
            plans.append(Plan(trunk=trunk, tail=path_mask(ends[:width], trunk).to(device)))
        return plans

    def attention(
        self,
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """A transformers attention function: each row by its plan with PLANS, else SDPA."""
        plans = kwargs.pop(PLANS, None)
        if plans is None:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(
                module, query, key, value, attention_mask, scaling=scaling, **kwargs
            )
        length = query.shape[2]
        gqa = query.shape[1] != key.shape[1]
        outs = []
        for b, plan in enumerate(plans):  # (1, H, L, D) each
            q, k, v = query[b : b + 1], key[b : b + 1], value[b : b + 1]
            if plan.flex is not None:  # padded to the one compiled shape, in attention only
                q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, self.width - length)) for t in (q, k, v))
                out = self.kernel(q, k, v, block_mask=plan.flex, scale=scaling, enable_gqa=gqa)[:, :, :length]
            else:
                out = trunk_then_tail(q, k, v, plan, scaling, gqa)
            outs.append(out)
        return torch.cat(outs).transpose(1, 2).contiguous(), None  # (B, L, H, D)
