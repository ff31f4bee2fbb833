"""The rule checks (trainer/rules.py) against cases worked out by hand."""

from __future__ import annotations

import pytest

from rlme.trainer.rules import numbered_list_rule, polite_rule, reference_rule


@pytest.mark.parametrize(
    ("response", "reference", "reward"),
    [
        ("The answer is 42.", "42", 1.0),
        ("17 - 5 = 12", "12", 1.0),
        ("That makes 1,234 apples", "1234", 1.0),
        ("x = 3.50", "3.5", 1.0),
        ("It drops to -7", "-7", 1.0),
        ("Step one... so 42", "#### 42", 1.0),  # GSM8K-style reference
        ("42 or 41? I say 41", "42", 0.0),  # the last number counts
        ("I do not know", "42", 0.0),
        ("42", "no number here", 0.0),
        # A reference without a number: its words, whole, ignoring case and accents.
        ("The capital of France is Paris.", "Paris", 1.0),
        ("the capital is BOGOTA", "Bogotá", 1.0),
        ("It is Buenos  Aires, of course", "Buenos Aires", 1.0),
        ("Parisian cafes are nice", "Paris", 0.0),  # whole words only
        ("The capital is Buenos Dias", "Buenos Aires", 0.0),
        ("Lyon", "Paris", 0.0),
        ("anything", "", 0.0),
    ],
)
def test_reference_rule(response: str, reference: str, reward: float) -> None:
    assert reference_rule(response, reference) == reward


@pytest.mark.parametrize(
    ("response", "score"),
    [
        ("Thank you for asking! Here is how.", 1.0),
        ("I'm sorry to hear that; let me help.", 1.0),
        ("Thanks, but that is a stupid idea.", 0.0),
        ("Shut up.", 0.0),
        ("Here is the answer.", 0.0),
    ],
)
def test_polite_rule(response: str, score: float) -> None:
    assert polite_rule(response) == score


def test_reference_rule_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="needs a 'reference'"):
        reference_rule("Paris", None)


@pytest.mark.parametrize(
    ("response", "score"),
    [
        ("1. Apple\n2. Pear\n3. Plum", 1.0),
        ("Here are three fruits:\n\n1. Apple\n2) Pear\n\n3. **Plum**\n\nEnjoy!", 1.0),
        ("  1. Apple\n  2. Pear\n  3. Plum\n4. Fig", 1.0),  # indented, and more than three
        ("1. Nile\n   - long\n\n2. Amazon\n   Note: wide\n3. Danube", 1.0),  # lines between items
        ("1. Apple\n2. Pear", 0.0),  # two items
        ("1. Apple 2. Pear 3. Plum", 0.0),  # not one item per line
        ("1. Apple\n3. Pear\n2. Plum", 0.0),  # out of order
        ("1.\n2.\n3.", 0.0),  # numbers without items
        ("- Apple\n- Pear\n- Plum", 0.0),  # bullets are not numbers
        ("Apples, pears and plums.", 0.0),
    ],
)
def test_numbered_list_rule(response: str, score: float) -> None:
    assert numbered_list_rule(response) == score
