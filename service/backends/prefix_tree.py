"""Prefix-tree packing: many evaluations in a few rows, every shared prefix computed once.

The evaluations of a batch (all questions of all items, from every request in it) share
prefixes at several levels: the system text, then a GRPO group's prompt, then a response,
then only the question differs. Sorted lexicographically, each sequence shares with the
whole set before it exactly its longest common prefix (LCP) with its predecessor, so a
row is built by appending, for each sequence, only the tokens after that LCP. The row is
a pre-order walk of the prefix tree: a token's position id is its depth, and it may
attend to its own path from the root (its ancestors and itself), never to a sibling
branch. Scoring the row equals scoring every sequence alone, up to float rounding.

Memory: the attention mask is dense (row length squared), so a row holds at most
`budget` tokens; the sequence that would pass it starts a new row, which recomputes the
prefix it shares with the previous row (sorted order keeps such splits rare: they fall
between prompts as long as one prompt's subtree fits). A sequence longer than the budget
starts a row of its own with room for LONG_ROW_ROOM more tokens, so its siblings (the
other questions of a long response) join it instead of recomputing the response: such
a row holds at most its first sequence's length + LONG_ROW_ROOM tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rlme.service.prompting import common_prefix_len


@dataclass
class PackedRow:
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # depth in the prefix tree
    # (start, end, ancestors): row[start:end] are new tokens of one sequence; `ancestors`
    # are the row indices of the shared prefix they extend.
    segments: list[tuple[int, int, list[int]]] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # sequence indices, in row order
    answers: list[int] = field(default_factory=list)  # row index of each member's last token
    shared: list[int] = field(default_factory=list)  # tokens each member did not recompute


LONG_ROW_ROOM = 256  # tokens for the siblings of a sequence longer than the budget


def pack(sequences: Sequence[Sequence[int]], budget: int, share: bool = True) -> list[PackedRow]:
    """Rows of the prefix tree of `sequences`; `share=False` gives one row per sequence."""
    rows: list[PackedRow] = []
    row: PackedRow | None = None
    previous: Sequence[int] = ()
    path: list[int] = []  # row index of the previous sequence's token at each depth
    capacity = budget
    for index in sorted(range(len(sequences)), key=lambda i: tuple(sequences[i])):
        sequence = sequences[index]
        lcp = common_prefix_len((previous, sequence)) if row is not None and share else 0
        if row is None or not share or (row.tokens and len(row.tokens) + len(sequence) - lcp > capacity):
            row, lcp, path = PackedRow(), 0, []
            rows.append(row)
            capacity = budget if len(sequence) <= budget else len(sequence) + LONG_ROW_ROOM
        start = len(row.tokens)
        path = path[:lcp] + list(range(start, start + len(sequence) - lcp))
        row.tokens.extend(sequence[lcp:])
        row.positions.extend(range(lcp, len(sequence)))
        row.segments.append((start, len(row.tokens), path[:lcp]))
        row.members.append(index)
        row.answers.append(path[len(sequence) - 1])
        row.shared.append(lcp)
        previous = sequence
    return rows


def tree_mask(rows: Sequence[PackedRow], width: int) -> torch.Tensor:
    """Boolean (B, 1, W, W) mask, True where query i may attend key j (j on i's path).

    Padding attends only to itself, so no row of the softmax is empty (an empty row gives
    NaN, which would then flow into the padding's keys and values).
    """
    mask = torch.zeros((len(rows), width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for b, row in enumerate(rows):
        for start, end, ancestors in row.segments:
            if end == start:
                continue
            mask[b, start:end, start:end] = causal[: end - start, : end - start]
            if ancestors:
                mask[b, start:end, torch.tensor(ancestors)] = True
        n = len(row.tokens)
        pad = torch.arange(n, width)
        mask[b, pad, pad] = True
    return mask[:, None]
