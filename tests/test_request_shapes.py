"""`request_shape: auto`: every shape tried first, then the fastest, re-tried now and then."""

from __future__ import annotations

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
    picked = run(ShapeChooser(), speed, 100)
    first = picked[: TRIALS * len(SHAPES)]
    assert sorted(first) == sorted(SHAPES * TRIALS)
    later = picked[TRIALS * len(SHAPES) :]
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
