"""`request_shape: auto`: every shape tried first, then the fastest, re-tried now and then."""

from __future__ import annotations

import pytest

from rlme.service.backends.request_shapes import EXPLORE_EVERY, SHAPES, TRIALS, ShapeChooser


def run(chooser: ShapeChooser, speed: dict[str, float], batches: int) -> list[str]:
    picked = []
    for _ in range(batches):
        shape = chooser.pick()
        chooser.record(shape, tokens=1000, seconds=1000 / speed[shape])
        picked.append(shape)
    return picked


def test_each_shape_is_tried_then_the_fastest_wins_with_a_few_retries() -> None:
    speed = {"waves": 900.0, "batched": 1000.0, "per_evaluation": 1100.0}
    chooser = ShapeChooser()
    picked = run(chooser, speed, 100)
    trials = picked[1 : 1 + TRIALS * len(SHAPES)]  # after the warm-up batch, A B C C B A
    assert trials == [*SHAPES, *SHAPES[::-1]]
    later = picked[1 + TRIALS * len(SHAPES) :]
    assert later.count("per_evaluation") >= len(later) - len(later) // EXPLORE_EVERY - 1
    assert {"waves", "batched"} <= set(later)  # still re-tried, so a change would be seen


def test_a_change_of_the_fastest_shape_is_followed() -> None:
    chooser = ShapeChooser()
    run(chooser, {"waves": 900.0, "batched": 1000.0, "per_evaluation": 1100.0}, 60)
    picked = run(chooser, {"waves": 2000.0, "batched": 1000.0, "per_evaluation": 500.0}, 120)
    assert picked[-20:].count("waves") >= 17


def test_batches_in_flight_before_any_answer_spread_over_the_shapes() -> None:
    chooser = ShapeChooser()
    in_flight = [chooser.pick() for _ in range(4)]  # four batches start before one finishes
    assert len(set(in_flight)) == 3


def test_a_machine_that_speeds_up_meanwhile_favours_no_shape() -> None:
    """Seen on a 2-core CPU: the first batch slow, then each a little faster. In plain rotation
    (A B C A B C) the shape tried last read fastest; the warm-up and the balanced order fix it."""
    base = {"waves": 900.0, "batched": 1000.0, "per_evaluation": 980.0}  # batched 2% ahead
    chooser = ShapeChooser()
    for n in range(1, 1 + 1 + TRIALS * len(SHAPES)):
        shape = chooser.pick()
        speed = base[shape] * (1 + 0.03 * n) * (0.5 if n == 1 else 1.0)  # 3% faster a batch
        chooser.record(shape, tokens=1000, seconds=1000 / speed)
    # by hand: batched at batches 3 and 6, 1000 x 1.135; per_evaluation at 4 and 5, 980 x 1.135
    assert chooser.rate("batched") == pytest.approx(1135.0)
    assert chooser.rate("per_evaluation") == pytest.approx(980 * 1.135)
    assert chooser.best() == "batched"
    assert chooser.started["waves"] == 3 and len(chooser.rates["waves"]) == 2  # the warm-up: not recorded
