"""The run monitor: hacking signals on synthetic per-step statistics with known answers
(pure functions), then over HTTP with the real evaluator: per-step statistics, the alarm
header, GET /v1/runs/{run}, and statistics that survive a restart."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from rlme.client.wire_runs import QuestionStep, RunStep
from rlme.service.app import create_app
from rlme.service.hacking_signals import Thresholds, drift, label_mass, rule_agreement, run_alarm, signals
from rlme.service.run_stats import QuestionStats, StepStats, auc, repetition

from support import service_settings

TH = Thresholds(window=2)


def step(n: int, p_yes: float, chars: float = 100, markdown: float = 0.0, rule_auc: float | None = None,
         mass: float = 0.9) -> RunStep:  # fmt: skip
    question = QuestionStep(
        evaluations=10, p_yes_mean=p_yes, p_yes_quantiles={}, label_mass_mean=mass, low_label_mass=0
    )
    return RunStep(step=n, items=10, reward_mean=0.0, response_chars_mean=chars, markdown_share=markdown,
                   repetition_mean=0.0, rule_auc=rule_auc, questions={"default/q": question})  # fmt: skip


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
    assert found == {"drift": "watch", "rule_agreement": "watch", "label_mass": "ok"}
    assert run_alarm(signals(both, TH)) == "alarm"  # the two watches together
    assert run_alarm(signals(both[:2], TH)) == "ok"


def test_step_stats_round_trip_through_json() -> None:
    stats = StepStats()
    stats.add_item(-0.5, "**Bolivia**", 0.7, 0.0)
    stats.question("default/q").add(0.7, 0.8, False)
    again = StepStats.from_json(stats.to_json())
    assert again.summary(3) == stats.summary(3)
    assert again.summary(3).markdown_share == 1.0


@pytest.mark.model
async def test_a_run_is_monitored_over_http_and_survives_a_restart(tmp_path: Path) -> None:
    settings = service_settings(monitoring={"db_path": str(tmp_path / "runs.sqlite"), "window": 1})
    questions = [{"id": "correct", "text": "Is the answer correct?"}]
    items = [
        {"prompt": "What is 2+2?", "response": "4", "rule_score": 1.0},
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
    assert first["rule_auc"] in (0.0, 0.5, 1.0)  # one passing, one failing item
    assert {s["name"] for s in report["signals"]} == {"drift", "rule_agreement", "label_mass"}
    assert 'rlme_run_alarm{run="exp-1"}' in metrics

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
