"""Calibration of p_yes: the Platt fit, ECE and the held-out split on numbers with known
answers, then POST /v1/calibrations with the real evaluator on labelled items
(examples/calibration_lists.jsonl): ECE and Brier score on the held-out items, the raw
p_yes untouched, `calibrated: true` adding p_yes_calibrated, a request without it byte for
byte what it was, admin only, and the fitted maps kept across a restart."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import httpx
import pytest

from rlme.client.wire import Calibration
from rlme.service.auth import hash_key
from rlme.service.calibration import (
    CalibrationStore,
    apply,
    brier,
    ece,
    fit_platt,
    held_out_split,
    logit,
    sigmoid,
)

from support import loaded_app, service_settings

DATA = Path(__file__).resolve().parent.parent / "examples" / "calibration_lists.jsonl"
ADMIN_KEY, TEAM_KEY = "rlme-test-admin-key", "rlme-test-team-key"


def test_platt_fit_recovers_a_known_map() -> None:
    rng = random.Random(0)
    a, b = 3.0, -0.5
    p = [sigmoid(rng.gauss(0, 1)) for _ in range(4000)]
    labels = [rng.random() < apply(a, b, value) for value in p]
    fit_a, fit_b = fit_platt(p, labels)
    assert fit_a == pytest.approx(a, rel=0.1) and fit_b == pytest.approx(b, abs=0.1)
    assert apply(1.0, 0.0, 0.3) == pytest.approx(0.3)  # the identity map
    separated = fit_platt([0.4, 0.45, 0.55, 0.6], [False, False, True, True])  # finite, not infinite
    assert all(math.isfinite(v) for v in separated) and separated[0] > 1
    assert logit(0.0) < -10 and logit(1.0) > 10  # clipped, never inf
    # A confident judge (logits around +-4, spread 4): a full Newton step would overshoot.
    for seed in range(10):
        rng = random.Random(seed)
        truth = [rng.random() < 0.5 for _ in range(60)]
        confident = [sigmoid(rng.gauss(4 if y else -4, 4)) for y in truth]
        fit_a, fit_b = fit_platt(confident, truth)
        assert 0 < fit_a < 5 and abs(fit_b) < 5, (seed, fit_a, fit_b)


def test_ece_brier_and_the_held_out_split_by_hand() -> None:
    # Bin [0.2, 0.3): mean 0.2, 1 of 2 yes -> |0.4 - 1| = 0.6; bin [0.9, 1): 0.9 vs 1 -> 0.1.
    assert ece([0.2, 0.2, 0.9], [True, False, True]) == pytest.approx((0.6 + 0.1) / 3)
    assert ece([0.5, 0.5], [True, False]) == 0.0  # calibrated, though useless
    assert brier([1.0, 0.0, 0.5], [True, True, False]) == pytest.approx((0 + 1 + 0.25) / 3)
    labels = [i % 3 == 0 for i in range(40)]  # 14 yes, 26 no
    train, held = held_out_split(labels, 0.25)
    assert sorted(train + held) == list(range(40)) and not set(train) & set(held)
    assert sum(labels[i] for i in held) == 4 and sum(not labels[i] for i in held) == 6  # per label
    assert held_out_split(labels, 0.25) == (train, held)
    train, held = held_out_split([True, True, False, False], 0.75)  # one of each label stays to fit on
    assert len(train) == 2 and len(held) == 2


def test_store_keeps_fits_by_evaluator_and_question_text(tmp_path: Path) -> None:
    def fit(question: str, a: float) -> Calibration:
        return Calibration(evaluator="default", model="m", question=question, question_id="q", a=a, b=0,
                           train_items=6, held_out_items=2, ece_before=0.3, ece_after=0.1, brier_before=0.3,
                           brier_after=0.2, fitted_at=0.0)  # fmt: skip

    path = tmp_path / "calibrations.json"
    store = CalibrationStore(path)
    store.put([fit("Is it right?", 2.0), fit("Is it short?", 3.0)])
    store.put([fit("Is it right?", 4.0)])  # a refit replaces
    again = CalibrationStore(path)
    assert sorted(f.a for f in again.all()) == [3.0, 4.0]
    found = again.get("default", "Is it right?")
    assert found is not None and found.a == 4.0
    assert again.get("other", "Is it right?") is None


@pytest.mark.model
async def test_calibration_over_http_with_the_real_evaluator(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    questions = [
        {"id": "list", "text": "Is the response a numbered list of three items?"},
        {"id": "correct", "text": "Is the answer correct?"},
    ]
    keys = [{"tenant": "platform", "sha256": hash_key(ADMIN_KEY), "admin": True},
            {"tenant": "team-a", "sha256": hash_key(TEAM_KEY)}]  # fmt: skip
    settings = service_settings(
        calibrations_path=str(tmp_path / "calibrations.json"),
        auth={"keys": keys, "allow_anonymous": False},
        limits={"max_items": 128},
    )
    unlabelled = [{k: v for k, v in r.items() if k != "label"} for r in rows[:4]]
    probe = {"items": unlabelled, "questions": questions}
    team = {"authorization": f"Bearer {TEAM_KEY}"}
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        loaded_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=600) as client,
    ):
        before = await client.post("/v1/rewards", json=probe, headers=team)
        refused = await client.post("/v1/rewards", json={**probe, "calibrated": True}, headers=team)
        assert refused.status_code == 422 and "POST /v1/calibrations" in refused.json()["error"]["message"]
        body = {"items": rows, "questions": questions}
        assert (await client.post("/v1/calibrations", json=body, headers=team)).status_code == 403
        fitted = await client.post("/v1/calibrations", json=body, headers=admin)
        assert fitted.status_code == 200, fitted.text
        fits = {f["question_id"]: f for f in fitted.json()["calibrations"]}
        after = await client.post("/v1/rewards", json=probe, headers=team)
        calibrated = await client.post("/v1/rewards", json={**probe, "calibrated": True}, headers=team)
        listed = (await client.get("/v1/calibrations", headers=team)).json()
    assert after.content == before.content  # without `calibrated`, byte for byte as before
    assert b"p_yes_calibrated" not in after.content
    for fit in fits.values():
        assert fit["held_out_items"] == 24 and fit["train_items"] == 72
        assert fit["brier_after"] < fit["brier_before"]  # the proper score improves for both
    assert fits["correct"]["ece_after"] < fits["correct"]["ece_before"]  # this raw p_yes is biased low
    raw, cal = before.json()["results"], calibrated.json()["results"]
    assert calibrated.json()["rewards"] == before.json()["rewards"]
    for plain, scored in zip(raw, cal, strict=True):
        for p, c in zip(plain["scores"], scored["scores"], strict=True):
            fit = fits[c["question"]]
            assert c["p_yes"] == p["p_yes"]  # the raw p_yes is never replaced
            assert c["p_yes_calibrated"] == pytest.approx(apply(fit["a"], fit["b"], p["p_yes"]))
    assert len(listed["calibrations"]) == 2
    assert len(CalibrationStore(tmp_path / "calibrations.json").all()) == 2  # kept for the next start
