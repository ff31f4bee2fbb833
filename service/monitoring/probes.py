"""Probes of a monitored run: anchored items scored again without their reference, and
canaries (degenerate rewrites of real responses, service/monitoring/canaries.py).

`choose_probes` picks them from a scored reward request (pure, seeded by the run, step
and request, so a rerun picks the same); the scorer scores them in the background with the
same evaluators and questions and hands `AnchorPair`s and `CanaryScore`s to the monitor.
A request without `run` is never probed.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from rlme.client.wire import Item, ItemResult, MetaQuestion, RewardRequest
from rlme.service.monitoring.canaries import prompt_text, rewrite
from rlme.service.settings import MonitoringConfig


@dataclass(frozen=True)
class Probes:
    anchors: list[int]  # indices of anchored items to score again without the reference
    canaries: list[tuple[int, str, Item]]  # (index of the real item, kind, the canary item)


@dataclass(frozen=True)
class AnchorPair:
    anchored: float  # mean p_yes as the caller asked (reference shown), on the probe's questions
    unanchored: float


@dataclass(frozen=True)
class CanaryScore:
    kind: str
    prompt: str
    response: str
    p_yes: float
    real_p_yes: float


def choose_probes(request: RewardRequest, questions: list[MetaQuestion], config: MonitoringConfig) -> Probes:
    """Each response becomes a canary with probability `canary_rate`, each anchored item is
    re-scored with probability `anchor_rate`: the expected extra load is those rates, whatever
    the request's size. Canaries first, anchors from what is left of the budget."""
    if request.run is None or config.max_probes_per_request == 0:
        return Probes([], [])
    seed = zlib.crc32(f"{request.run}|{request.step}|{request.items[0].response}".encode())
    rng = random.Random(seed)
    budget = config.max_probes_per_request
    canaries: list[tuple[int, str, Item]] = []
    if config.canary_kinds:
        kind = rng.randrange(len(config.canary_kinds))
        for i, item in enumerate(request.items):
            if len(canaries) >= budget or rng.random() >= config.canary_rate:
                continue
            name = config.canary_kinds[kind % len(config.canary_kinds)]
            kind += 1
            text = rewrite(name, item.prompt, item.response, rng)
            if text != item.response:  # e.g. a one-sentence answer cut after its first sentence
                canaries.append((i, name, item.model_copy(update={"response": text, "rule_score": None})))
    anchors: list[int] = []
    if any(not q.requires_reference for q in questions):
        anchored = [i for i, item in enumerate(request.items) if item.reference is not None]
        anchors = [i for i in anchored if rng.random() < config.anchor_rate][: budget - len(canaries)]
    return Probes(anchors, canaries)


def unanchored_items(request: RewardRequest, probes: Probes) -> list[Item]:
    return [
        request.items[i].model_copy(update={"reference": None, "rule_score": None}) for i in probes.anchors
    ]


def mean_p_yes(result: ItemResult, question_ids: set[str] | None = None) -> float:
    scores = [s for s in result.scores if question_ids is None or s.question in question_ids]
    return sum(s.p_yes for s in scores) / max(1, len(scores))


def anchor_pairs(
    probes: Probes, real: list[ItemResult], unanchored: list[ItemResult], question_ids: set[str]
) -> list[AnchorPair]:
    return [
        AnchorPair(mean_p_yes(real[i], question_ids), mean_p_yes(result))
        for i, result in zip(probes.anchors, unanchored, strict=True)
    ]


def canary_scores(probes: Probes, real: list[ItemResult], scored: list[ItemResult]) -> list[CanaryScore]:
    return [
        CanaryScore(kind, prompt_text(item.prompt), item.response, mean_p_yes(result), mean_p_yes(real[i]))
        for (i, kind, item), result in zip(probes.canaries, scored, strict=True)
    ]
