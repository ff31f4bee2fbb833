"""`request_shape: auto`: every shape tried first, then the fastest, re-tried now and then."""

from __future__ import annotations

import pytest

from rlme.service.backends.request_shapes import EXPLORE_EVERY, SHAPES, TRIALS, WARM_UP, ShapeChooser


def run(chooser: ShapeChooser, speed: dict[str, float], batches: int) -> list[str]:
    picked = []
    for _ in range(batches):
        shape = chooser.pick()
        sent = SHAPES[0] if shape == WARM_UP else shape  # what the backend does with the warm-up
        chooser.record(shape, tokens=1000, seconds=1000 / speed[sent])
        picked.append(shape)
    return picked


def test_each_shape_is_tried_then_the_fastest_wins_with_a_few_retries() -> None:
    speed = {"waves": 900.0, "batched": 1000.0, "per_evaluation": 1100.0}
    chooser = ShapeChooser()
    picked = run(chooser, speed, 100)
    assert picked[0] == WARM_UP
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
    assert in_flight == [WARM_UP, *SHAPES]


def test_only_the_warm_up_batch_is_left_out_whichever_finishes_first() -> None:
    chooser = ShapeChooser()
    assert chooser.best() is None and chooser.rate("batched") == 0.0  # a scrape first: no effect
    warm_up, first = chooser.pick(), chooser.pick()
    assert (warm_up, first) == (WARM_UP, SHAPES[0])  # the scrape did not use up the warm-up
    chooser.record(first, 1000, 1.0)  # the trial finishes before the warm-up
    chooser.record(warm_up, 1000, 10.0)  # the cold one
    assert chooser.rate(SHAPES[0]) == 1000.0  # kept the trial, left out the warm-up


def test_a_shape_whose_trials_all_failed_is_tried_again() -> None:
    chooser = ShapeChooser()
    picked = []
    for _ in range(3 * EXPLORE_EVERY):
        shape = chooser.pick()
        picked.append(shape)
        if shape != "waves":  # every waves batch fails: nothing is recorded for it
            chooser.record(shape, 1000, 1.0)
    assert picked[1 + TRIALS * len(SHAPES) :].count("waves") >= 1


def test_a_machine_that_speeds_up_meanwhile_favours_no_shape() -> None:
    """Seen on a 2-core CPU: the first batch slow, then each a little faster. In plain rotation
    (A B C A B C) the shape tried last read fastest; the warm-up and the balanced order fix it."""
    base = {"waves": 900.0, "batched": 1000.0, "per_evaluation": 980.0}  # batched 2% ahead
    chooser = ShapeChooser()
    for n in range(1, 1 + 1 + TRIALS * len(SHAPES)):
        shape = chooser.pick()
        sent = SHAPES[0] if shape == WARM_UP else shape
        speed = base[sent] * (1 + 0.03 * n) * (0.5 if n == 1 else 1.0)  # 3% faster a batch
        chooser.record(shape, tokens=1000, seconds=1000 / speed)
    # by hand: batched at batches 3 and 6, 1000 x 1.135; per_evaluation at 4 and 5, 980 x 1.135
    assert chooser.rate("batched") == pytest.approx(1135.0)
    assert chooser.rate("per_evaluation") == pytest.approx(980 * 1.135)
    assert chooser.best() == "batched"
    assert chooser.started["waves"] == 2 and len(chooser.kinds[0].rates["waves"]) == 2  # warm-up: apart


def test_each_kind_of_batch_has_its_own_trials_and_choice() -> None:
    """Short prompts run at fewer tokens a second than long shared ones: a choice made on one
    kind must not compare a fresh figure of one shape with another kind's stale ones."""
    chooser = ShapeChooser()
    short = {"waves": 900.0, "batched": 1000.0, "per_evaluation": 1100.0, WARM_UP: 900.0}
    for _ in range(20):
        shape = chooser.pick(200)
        chooser.record(shape, 1000, 1000 / short[shape], 200)
    assert chooser.best() == "per_evaluation"
    long = {"waves": 1500.0, "batched": 2000.0, "per_evaluation": 1800.0}  # 1,000-token prompts
    picked = []
    for _ in range(20):
        shape = chooser.pick(1000)
        chooser.record(shape, 1000, 1000 / long[shape], 1000)
        picked.append(shape)
    assert picked[:6] == [*SHAPES, *SHAPES[::-1]]  # its own trials (the warm-up was the short kind's)
    assert chooser.best() == "batched" and picked[-5:].count("batched") >= 4
    assert chooser.rate("per_evaluation") == 1800.0  # this kind's figure, not the short kind's 1100
    chooser.pick(200)
    assert chooser.best() == "per_evaluation"  # the short kind kept its own
