"""Reward arithmetic against numbers worked out by hand."""

import math

import pytest

from rlme.service.reward_math import log_p_yes, p_yes, weighted_reward


def test_p_yes_normalises_over_yes_and_no_only() -> None:
    # P(yes)=0.3, P(no)=0.1 (the rest of the vocabulary has 0.6): p_yes = 0.3/0.4 = 0.75
    assert p_yes(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert log_p_yes(math.log(0.3), math.log(0.1)) == pytest.approx(math.log(0.75))


def test_p_yes_is_stable_for_tiny_probabilities() -> None:
    # exp(-1000) underflows to 0; the ratio is still e^-1000 / (e^-1000 + e^-1001)
    expected = 1 / (1 + math.exp(-1))
    assert p_yes(-1000.0, -1001.0) == pytest.approx(expected)


def test_weighted_reward_sums_and_floors() -> None:
    # v=1,w=1: log 0.5 = -0.6931; v=1,w=0.5: floored -50 -> -20, times 0.5 = -10
    # v=0.5,w=2: log 0.25 = -1.3863, times 1 = -1.3863. Total -12.0794
    terms = [(1.0, 1.0, math.log(0.5)), (1.0, 0.5, -50.0), (0.5, 2.0, math.log(0.25))]
    assert weighted_reward(terms, floor=-20.0) == pytest.approx(-12.07944, abs=1e-5)


def test_negative_weight_rewards_a_no() -> None:
    assert weighted_reward([(1.0, -1.0, math.log(0.1))], floor=-20.0) == pytest.approx(2.302585, abs=1e-6)
