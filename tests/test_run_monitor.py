"""The run monitor: hacking signals on synthetic per-step statistics with known answers
(pure functions), then over HTTP with the real evaluator: per-step statistics, the alarm
header, GET /v1/runs/{run}, and statistics that survive a restart."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import httpx
import pytest

from rlme.client.wire import ChatMessage, Item, MetaQuestion, RewardRequest
from rlme.client.wire.runs import AnchorStep, CanaryStep, QuestionStep, RunStep, Signal
from rlme.service.app import create_app
from rlme.service.monitoring.canaries import AFFIRMATION, KINDS, first_sentence, rewrite
from rlme.service.monitoring.probes import choose_probes
from rlme.service.monitoring.signals import (
    Thresholds,
    anchor_divergence,
    canaries,
    drift,
    label_mass,
    rule_agreement,
    rule_trend,
    run_alarm,
    signals,
)
from rlme.service.monitoring.stats import QuestionStats, StepStats, auc, repetition
from rlme.service.settings import CanaryKind, MonitoringConfig

from support import service_settings

TH = Thresholds(window=2)


def step(n: int, p_yes: float, chars: float = 100, markdown: float = 0.0, rule_auc: float | None = None,
         mass: float = 0.9, rule_pass: float | None = None) -> RunStep:  # fmt: skip
    question = QuestionStep(
        evaluations=10, p_yes_mean=p_yes, p_yes_quantiles={}, label_mass_mean=mass, low_label_mass=0
    )
    return RunStep(step=n, items=10, reward_mean=0.0, response_chars_mean=chars, markdown_share=markdown,
                   repetition_mean=0.0, rule_auc=rule_auc, rule_pass_rate=rule_pass,
                   rule_items=0 if rule_pass is None else 10, rule_passes=round(10 * (rule_pass or 0)),
                   questions={"default/q": question})  # fmt: skip


def test_auc_repetition_and_quantiles_by_hand() -> None:
    assert auc([(0.9, 1), (0.8, 1), (0.2, 0), (0.85, 0)]) == pytest.approx(0.75)  # 3 of 4 pairs
    assert auc([(0.5, 1), (0.5, 0)]) == 0.5  # a tie counts half
    assert auc([(0.5, 1)]) is None
    assert repetition("a b c a b c") == pytest.approx(1 / 4)  # "a b c" again: 1 of 4 trigrams
    assert repetition("too short") == 0.0
    stats = QuestionStats()
    for p in (0.05, 0.15, 0.25, 0.35):
        stats.add(p, 0.9, False)
    assert stats.quantile(0.5) == pytest.approx(0.2)  # 2 of 4 at the end of bin [0.15, 0.2)
    assert stats.summary().p_yes_mean == pytest.approx(0.2)


def test_drift_is_reward_up_with_a_format_shift() -> None:
    hacked = [step(1, 0.5), step(2, 0.5), step(3, 0.7, markdown=0.6), step(4, 0.7, markdown=0.6)]
    signal = drift(hacked, TH)
    assert signal.level == "watch" and signal.value == pytest.approx(0.2) and "markdown" in signal.detail
    honest = [step(1, 0.5), step(2, 0.5), step(3, 0.7), step(4, 0.7)]  # reward up, same format
    assert drift(honest, TH).level == "ok"
    shorter = [step(1, 0.5), step(2, 0.5), step(3, 0.5, chars=20), step(4, 0.5, chars=20)]  # no reward rise
    assert drift(shorter, TH).level == "ok"
    assert drift(hacked[:3], TH).level == "ok"  # too few steps to compare


def test_rule_agreement_alarms_when_the_rule_stops_agreeing_while_reward_rises() -> None:
    rising = [step(1, 0.5, rule_auc=0.9), step(2, 0.5, rule_auc=0.9),
              step(3, 0.7, rule_auc=0.4), step(4, 0.7, rule_auc=0.5)]  # fmt: skip
    signal = rule_agreement(rising, TH)
    assert signal.level == "alarm" and signal.value == pytest.approx(0.45)
    flat = [step(1, 0.5, rule_auc=0.9), step(2, 0.5, rule_auc=0.9),
            step(3, 0.5, rule_auc=0.7), step(4, 0.5, rule_auc=0.7)]  # fmt: skip
    assert rule_agreement(flat, TH).level == "watch"  # fallen 0.2 > auc_drop, reward flat
    agreeing = [step(n, 0.5 + 0.1 * n, rule_auc=0.9) for n in range(1, 5)]  # the rule confirms the reward
    assert rule_agreement(agreeing, TH).level == "ok"
    assert rule_agreement([step(n, 0.5) for n in range(1, 5)], TH).level == "ok"  # no rule scores


def test_label_mass_and_the_combined_alarm() -> None:
    assert label_mass([step(1, 0.5, mass=0.01)], TH).level == "watch"
    assert label_mass([step(1, 0.5, mass=0.5)], TH).level == "ok"
    late = {"markdown": 0.6, "rule_auc": 0.72}
    both = [
        step(1, 0.5, rule_auc=0.9),
        step(2, 0.5, rule_auc=0.9),
        step(3, 0.62, **late),
        step(4, 0.62, **late),
    ]
    found = {s.name: s.level for s in signals(both, TH)}
    assert found == {"drift": "watch", "rule_agreement": "watch", "label_mass": "ok", "rule_trend": "ok",
                     "anchor_divergence": "ok", "canaries": "ok"}  # fmt: skip
    assert run_alarm(signals(both, TH)) == "alarm"  # the two watches together
    assert run_alarm(signals(both[:2], TH)) == "ok"


def test_rule_trend_alarms_when_the_rules_pass_rate_halves_while_p_yes_rises() -> None:
    hacked = [step(1, 0.4, rule_pass=0.5), step(2, 0.4, rule_pass=0.3),
              step(3, 0.5, rule_pass=0.1), step(4, 0.5, rule_pass=0.0)]  # fmt: skip
    signal = rule_trend(hacked, TH)
    assert signal.level == "alarm" and signal.value == pytest.approx(0.125)  # 0.4 -> 0.05
    falling = [step(n, 0.4, rule_pass=r) for n, r in enumerate((0.5, 0.3, 0.1, 0.0), start=1)]
    assert rule_trend(falling, TH).level == "watch"  # the rule fell, the reward did not rise
    few = [step(n, 0.4 + n / 10, rule_pass=r) for n, r in enumerate((0.1, 0.1, 0.0, 0.0), start=1)]
    assert rule_trend(few, TH).level == "ok"  # 2 passing items at the start: too few to read a fall
    assert rule_trend([step(n, 0.5) for n in range(1, 5)], TH).level == "ok"


def test_a_rule_that_confirms_the_run_keeps_two_watches_a_watch() -> None:
    late = {"markdown": 0.6, "rule_auc": 0.72}
    confirmed = [step(1, 0.5, rule_auc=0.9, rule_pass=0.3), step(2, 0.5, rule_auc=0.9, rule_pass=0.3),
                 step(3, 0.62, **late, rule_pass=0.8), step(4, 0.62, **late, rule_pass=0.8)]  # fmt: skip
    found = signals(confirmed, TH)
    assert {s.name: s.level for s in found}["drift"] == "watch"
    assert {s.name: s.level for s in found}["rule_agreement"] == "watch"
    assert run_alarm(found) == "watch"  # the rule's pass rate rose with the reward


def probed(n: int, gap: float | None = None, canary: float | None = None, real: float = 0.6) -> RunStep:
    """A step with an anchor gap and/or canaries scoring `canary` beside real responses' `real`."""
    s = step(n, real)
    if gap is not None:
        s.anchor = AnchorStep(items=4, p_yes_anchored=0.5, p_yes_unanchored=0.5 + gap, gap=gap)
    if canary is not None:
        s.canaries = {"empty": CanaryStep(items=2, p_yes_mean=canary, p_yes_real=real)}
    return s


def test_anchor_divergence_watches_a_growing_gap_between_unchecked_and_checked_p_yes() -> None:
    assert (
        anchor_divergence([probed(1, 0.0), probed(2, 0.0), probed(3, 0.15), probed(4, 0.15)], TH).level
        == "watch"
    )
    alarm = anchor_divergence([probed(1, -0.1), probed(2, 0.0), probed(3, 0.3), probed(4, 0.3)], TH)
    assert alarm.level == "alarm" and alarm.value == pytest.approx(0.35)
    assert anchor_divergence([probed(n, 0.05) for n in range(1, 5)], TH).level == "ok"  # a constant gap
    no_anchors = anchor_divergence([step(n, 0.5) for n in range(1, 5)], TH)
    assert no_anchors.level == "ok" and "no anchored items" in no_anchors.detail
    # Anchored steps are compared with anchored steps, wherever they fall in the run.
    sparse = [probed(1, 0.0), step(2, 0.5), probed(3, 0.0), step(4, 0.5), probed(5, 0.2), probed(6, 0.2)]
    assert anchor_divergence(sparse, TH).level == "watch"


def test_canaries_watch_a_shrinking_margin_and_alarm_when_it_is_gone() -> None:
    shrinking = [probed(1, canary=0.2), probed(2, canary=0.2), probed(3, canary=0.45), probed(4, canary=0.45)]
    assert canaries(shrinking, TH).level == "watch"  # 0.4 -> 0.15
    gone = [probed(1, canary=0.2), probed(2, canary=0.2), probed(3, canary=0.6), probed(4, canary=0.61)]
    signal = canaries(gone, TH)
    assert signal.level == "alarm" and signal.value == pytest.approx(-0.005) and signal.change
    steady = [probed(n, canary=0.2) for n in range(1, 5)]
    assert canaries(steady, TH).level == "ok"
    # An evaluator that never told canaries apart: a watch about the evaluator, not a change.
    never = [probed(n, canary=0.6) for n in range(1, 5)]
    signal = canaries(never, TH)
    assert signal.level == "watch" and not signal.change and "from the start" in signal.detail
    assert canaries([step(1, 0.5)], TH).level == "ok"
    # Kinds differ in what an honest judge gives them: an affirmed canary should score like
    # its response. Empty canaries first and affirmed ones last is no shrinking margin.
    mixed = [probed(1, canary=0.2), probed(2, canary=0.2), probed(3), probed(4)]
    for late in mixed[2:]:
        late.canaries = {"affirmed": CanaryStep(items=2, p_yes_mean=0.6, p_yes_real=0.6)}
    assert canaries(mixed, TH).level == "ok"
    swayed = [probed(1), probed(2), probed(3), probed(4)]
    for n, late in enumerate(swayed):  # "Yes, this is correct." appended lifts P(yes) by 0.15 late on
        late.canaries = {"affirmed": CanaryStep(items=2, p_yes_mean=0.6 + 0.15 * (n >= 2), p_yes_real=0.6)}
    assert canaries(swayed, TH).level == "alarm"


def test_two_watched_changes_make_an_alarm_but_a_state_of_the_evaluator_does_not() -> None:
    def watch(name: str, change: bool = True) -> Signal:
        return Signal(name=name, level="watch", detail="", change=change)

    assert run_alarm([watch("drift"), watch("anchor_divergence")]) == "alarm"
    assert run_alarm([watch("drift"), watch("canaries", change=False)]) == "watch"
    assert run_alarm([watch("drift"), watch("label_mass", change=False)]) == "watch"
    assert run_alarm([Signal(name="canaries", level="alarm", detail="")]) == "alarm"


def test_canary_rewrites() -> None:
    rng = __import__("random").Random(0)
    response = "The capital of Peru is Lima. It lies on the coast, e.g. near Callao."
    assert first_sentence(response) == "The capital of Peru is Lima."
    assert first_sentence("1. Robin\n2. Crow") == "1. Robin"  # a list item is a line
    assert first_sentence("It is 3.14 or so") == "It is 3.14 or so"
    assert first_sentence("It is 42. Because.") == "It is 42."
    assert first_sentence('He said "yes." Then left.') == 'He said "yes."'
    assert first_sentence("1. Robin. A bird.\n2. Crow") == "1. Robin."
    assert rewrite("empty", "p", response, rng) == ""
    chat = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Peru?")]
    assert rewrite("echo", chat, response, rng) == "Peru?"
    assert rewrite("affirmed", "p", "Lima.  ", rng) == f"Lima. {AFFIRMATION}"
    words = rewrite("shuffled", "p", response, rng).split()
    assert sorted(words) == sorted(response.split()) and words != response.split()
    assert get_args(CanaryKind) == KINDS  # the config offers exactly the rewrites there are


def test_probes_are_chosen_from_a_runs_request_only_and_reproducibly() -> None:
    text = "It is answer {} here. More follows."
    items = [Item(prompt=f"q{i}", response=text.format(i), reference="r" if i < 3 else None)
             for i in range(20)]  # fmt: skip
    questions = [MetaQuestion(id="ok", text="Is it right?")]
    request = RewardRequest(items=items, questions=questions, run="r1", step=4)
    every = MonitoringConfig(canary_rate=1.0, anchor_rate=1.0)
    probes = choose_probes(request, questions, every)
    assert probes.anchors == [0, 1, 2]  # every anchored item
    assert len(probes.canaries) == 20 and {kind for _, kind, _ in probes.canaries} == set(KINDS)
    assert all(c.response != items[i].response for i, _, c in probes.canaries)
    assert probes == choose_probes(request, questions, every)  # same run, step, items: same probes
    assert choose_probes(request.model_copy(update={"run": None}), questions, every).canaries == []
    only_referenced = [MetaQuestion(id="same", text="Same as the reference?", requires_reference=True)]
    assert choose_probes(request, only_referenced, every).anchors == []  # cannot be asked without it
    # The budget goes to canaries first, so a fully anchored batch still gets them.
    capped = choose_probes(request, questions, MonitoringConfig(canary_rate=1.0, max_probes_per_request=5))
    assert len(capped.canaries) == 5 and capped.anchors == []
    # The rate is per response, whatever the request's size: one-item requests are not all probed.
    singles = [RewardRequest(items=[Item(prompt="q", response=f"Answer {n}. Yes.")], questions=questions,
                             run="r1", step=n) for n in range(400)]  # fmt: skip
    probed_share = sum(bool(choose_probes(r, questions, MonitoringConfig()).canaries) for r in singles) / 400
    assert 0.06 < probed_share < 0.14  # canary_rate 0.1
    one_sentence = RewardRequest(items=[Item(prompt="q", response="Lima.")], questions=questions, run="r")
    cut = choose_probes(
        one_sentence, questions, MonitoringConfig(canary_rate=1.0, canary_kinds=["first_sentence"])
    )
    assert cut.canaries == []  # the same text is no canary


def test_step_stats_round_trip_through_json() -> None:
    stats = StepStats()
    stats.add_item(-0.5, "**Bolivia**", 0.7, 0.0)
    stats.question("default/q").add(0.7, 0.8, False)
    stats.add_anchor(0.4, 0.7)
    stats.add_canary(3, "empty", "p", 0.5, 0.7, "")
    for reward in (-1.0, -0.2, -0.5, -0.1):
        stats.add_top(3, "p", f"r{reward}", reward, 0.5)
    again = StepStats.from_json(stats.to_json())
    assert again.summary(3) == stats.summary(3)
    summary = again.summary(3)
    assert summary.markdown_share == 1.0 and summary.rule_pass_rate == 0.0
    assert summary.anchor is not None and summary.anchor.gap == pytest.approx(0.3)
    assert summary.canaries["empty"].p_yes_mean == 0.5
    assert sorted(s.reward or 0 for s in again.sample_list() if s.kind == "top") == [-0.5, -0.2, -0.1]
    old_row = {k: v for k, v in stats.to_json().items()
               if k not in ("anchor", "canaries", "samples", "rule_items", "rule_passes")}  # fmt: skip
    old = StepStats.from_json(old_row).summary(3)  # a row from before probes and rule counts existed
    assert old.anchor is None and old.rule_items == 1 and old.rule_pass_rate == 0.0


@pytest.mark.model
async def test_a_run_is_monitored_over_http_and_survives_a_restart(tmp_path: Path) -> None:
    monitoring = {"db_path": str(tmp_path / "runs.sqlite"), "window": 1, "canary_rate": 1.0,
                  "anchor_rate": 1.0, "canary_kinds": ["empty", "echo"]}  # fmt: skip
    settings = service_settings(monitoring=monitoring)
    questions = [{"id": "correct", "text": "Is the answer correct?"}]
    items = [
        {"prompt": "What is 2+2?", "response": "4", "rule_score": 1.0, "reference": "4"},
        {"prompt": "What is 2+2?", "response": "**5**", "rule_score": 0.0},
    ]
    plain_body = {"items": [{"prompt": "What is 2+2?", "response": "4"}], "questions": questions}
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        await app.state.loading
        plain = await client.post("/v1/rewards", json=plain_body)
        assert "x-rlme-run-alarm" not in plain.headers
        for n in (1, 2):
            tagged = await client.post(
                "/v1/rewards", json={"items": items, "questions": questions, "run": "exp-1", "step": n}
            )
            assert tagged.status_code == 200 and tagged.headers["x-rlme-run-alarm"] in (
                "ok",
                "watch",
                "alarm",
            )
        # Anchors and canaries are scored after the answer; wait for them (like any concurrent
        # work, they could share a batch and change the last float digits of a score).
        await app.state.scorer.probes.drain()
        # A run's request scores exactly like an untagged one: the tag only adds the header.
        tagged_plain = await client.post("/v1/rewards", json={**plain_body, "run": "exp-2", "step": 0})
        assert tagged_plain.content == plain.content
        report = (await client.get("/v1/runs/exp-1")).json()
        metrics = (await client.get("/metrics")).text
        assert (await client.get("/v1/runs/nobody")).status_code == 404
        assert (await client.post("/v1/rewards", json={**plain_body, "step": 3})).status_code == 422
    assert [s["step"] for s in report["steps"]] == [1, 2]
    first = report["steps"][0]
    assert first["items"] == 2 and first["markdown_share"] == 0.5
    assert set(first["questions"]) == {"default/correct"}
    assert first["rule_auc"] is None  # one passing and one failing item: too few for an AUC
    assert {s["name"] for s in report["signals"]} == {
        "drift", "rule_trend", "rule_agreement", "label_mass", "anchor_divergence", "canaries"}  # fmt: skip
    # Run ids are the callers' words: /metrics counts runs per tenant and alarm, naming none.
    assert 'rlme_runs{alarm="' in metrics and "exp-1" not in metrics
    # The anchored item was scored again without its reference; both responses got a canary.
    anchor = first["anchor"]
    assert anchor["items"] == 1 and anchor["p_yes_anchored"] != anchor["p_yes_unanchored"]
    assert sum(c["items"] for c in first["canaries"].values()) == 2
    assert first["rule_pass_rate"] == 0.5
    kinds = [s["kind"] for s in report["samples"]]
    assert kinds.count("top") == 2 and len(kinds) >= 3  # the last step's responses and its canaries
    assert 'rlme_run_probes_total{outcome="ok"} 6.0' in metrics  # 2 steps x (1 anchor + 2 canaries)

    restarted = create_app(settings)
    async with (
        restarted.router.lifespan_context(restarted),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted), base_url="http://t") as client,
    ):
        # Let the model finish loading: an abandoned load goes on in its thread, and two
        # loads at once in one process trip over torch's global device context.
        await restarted.state.loading
        again = (await client.get("/v1/runs/exp-1")).json()
    assert again["steps"] == report["steps"]


def test_an_old_runs_file_is_migrated_to_tenants_and_a_corrupt_row_stops_nothing(tmp_path: Path) -> None:
    import sqlite3

    from rlme.service.metrics import Metrics
    from rlme.service.monitoring.monitor import RunMonitor
    from rlme.service.settings import MonitoringConfig

    db = tmp_path / "runs.sqlite"
    with sqlite3.connect(db) as old:  # the layout before runs belonged to tenants
        old.execute("CREATE TABLE run_steps (run TEXT, step INTEGER, stats TEXT, updated REAL)")
        old.execute("INSERT INTO run_steps VALUES ('exp', 1, ?, 0)", ('{"tenants": ["team-a"]}',))
        old.execute("INSERT INTO run_steps VALUES ('broken', 1, 'not json', 0)")
    monitor = RunMonitor(MonitoringConfig(), db, Metrics())
    assert monitor.store_error is None
    rows = set(sqlite3.connect(db).execute("SELECT tenant, run FROM tenant_run_steps"))
    assert rows == {("team-a", "exp"), ("anonymous", "broken")}
    report = monitor.report("broken", "anonymous")  # its unreadable step is skipped, not a 500
    assert report is not None and report.steps == []
