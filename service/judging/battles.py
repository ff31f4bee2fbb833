"""Meta-judge battles among N judgments of one response (Meta-Rewarding LMs, arXiv 2407.19594).

Every ordered pair (m shown first, n second) is one battle; `p[m, n]` is the meta-judge's
probability that the first-shown judgment is better. Position is corrected with the
paper's weights, computed from how often each position won overall:

    w1 = wins_second / (wins_first + wins_second)      (weight of a win shown first)
    w2 = wins_first  / (wins_first + wins_second)      (weight of a win shown second)
    B[m, n] = w1 * p[m, n] + w2 * (1 - p[n, m])

and a Bradley-Terry strength per judgment maximises sum B[m, n] log sigmoid(e_m - e_n).
Wins are probabilities, not counts (a soft version of the paper's 0/1 wins). Pure
functions, so the numbers can be checked by hand in tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Battles = Mapping[tuple[int, int], float]  # (first, second) -> P(first is better)


def position_weights(battles: Battles) -> tuple[float, float]:
    wins_first = sum(battles.values())
    wins_second = sum(1 - p for p in battles.values())
    total = wins_first + wins_second
    return wins_second / total, wins_first / total


def battle_matrix(n: int, battles: Battles) -> list[list[float]]:
    """B[m][n]; needs both orders of every pair."""
    w1, w2 = position_weights(battles)
    matrix = [[0.0] * n for _ in range(n)]
    for m in range(n):
        for k in range(n):
            if m != k:
                matrix[m][k] = w1 * battles[(m, k)] + w2 * (1 - battles[(k, m)])
    return matrix


def bradley_terry(
    matrix: Sequence[Sequence[float]], iterations: int = 500, prior: float = 0.01
) -> list[float]:
    """Log-strengths (mean 0) by the MM algorithm (Hunter, 2004).

    `prior` adds that many wins each way to every pair, so a judgment that lost every
    battle keeps a finite strength.
    """
    n = len(matrix)
    wins = [[matrix[m][k] + (prior if m != k else 0.0) for k in range(n)] for m in range(n)]
    strength = [1.0] * n
    for _ in range(iterations):
        updated = []
        for m in range(n):
            total = sum(wins[m])
            games = sum((wins[m][k] + wins[k][m]) / (strength[m] + strength[k]) for k in range(n) if k != m)
            updated.append(total / games)
        norm = math.exp(sum(math.log(s) for s in updated) / n)
        strength = [s / norm for s in updated]
    return [math.log(s) for s in strength]


def position_bias(battles: Battles) -> float:
    """Share of all wins that went to the first-shown judgment (0.5 = none)."""
    return position_weights(battles)[1]


def score_bias(battles: Battles, scores: Sequence[float | None]) -> float | None:
    """Among battles of judgments with different scores, the share won by the higher score.

    1.0 means the meta-judge always sides with the more generous judgment: the bias that
    made Meta-Rewarding stop judge training after two iterations. None without such battles.
    """
    shares = []
    for (first, second), p in battles.items():
        a, b = scores[first], scores[second]
        if a is None or b is None or a == b:
            continue
        shares.append(p if a > b else 1 - p)
    return sum(shares) / len(shares) if shares else None
