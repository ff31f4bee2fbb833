"""The arithmetic of RLME rewards, as small pure functions.

p_yes  = P(yes) / (P(yes) + P(no))      (each summed over the label's token variants)
reward = sum_j sum_k v_j * w_k * max(log p_yes_jk, floor)
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def log_p_yes(logp_yes: float, logp_no: float) -> float:
    """log of P(yes) / (P(yes) + P(no)), computed stably from full-vocabulary log-probs."""
    top = max(logp_yes, logp_no)
    return logp_yes - (top + math.log(math.exp(logp_yes - top) + math.exp(logp_no - top)))


def p_yes(logp_yes: float, logp_no: float) -> float:
    return math.exp(log_p_yes(logp_yes, logp_no))


def weighted_reward(terms: Iterable[tuple[float, float, float]], floor: float) -> float:
    """Sum of v * w * max(log p_yes, floor) over (v, w, log p_yes) terms."""
    return sum(v * w * max(logp, floor) for v, w, logp in terms)
