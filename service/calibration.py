"""Calibration of p_yes: Platt scaling on the logit, fitted on labelled items, and the
file the fitted maps are kept in (shared by every replica through Redis with
`state_store: redis`: a map fitted on one replica is used by the others at their next
calibrated request).

p_calibrated = sigmoid(a * logit(p_yes) + b): a > 1 sharpens an evaluator that hedges,
b moves its base rate. Fitted by Newton's method on the log loss against Platt's smoothed
targets ((n+ + 1)/(n+ + 2) for "yes" items, 1/(n- + 2) for "no" items), which keep a
small labelled set from making the map overconfident, plus a small ridge penalty (so
perfectly separated items still give finite a, b). Pure Python: the service without torch
(the remote front) calibrates too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlme.client.wire import ItemResult
from rlme.client.wire.calibration import Calibration
from rlme.service.errors import StoreUnavailable
from rlme.service.shared_store import Breaker, epoch, redis_client

log = logging.getLogger(__name__)

EPS = 1e-6
RIDGE = 1e-3
BINS = 10


def logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


def apply(a: float, b: float, p_yes: float) -> float:
    return sigmoid(a * logit(p_yes) + b)


def fit_platt(p_yes: Sequence[float], labels: Sequence[bool], iterations: int = 100) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * logit(p) + b) against the labels' targets.

    Newton steps, halved until the penalised loss goes down (a confident judge's large
    logits make a full step overshoot)."""
    xs = [logit(p) for p in p_yes]
    positives = sum(labels)
    negatives = len(labels) - positives
    targets = [(positives + 1) / (positives + 2) if y else 1 / (negatives + 2) for y in labels]

    def loss(a: float, b: float) -> float:
        total = RIDGE * (a - 1) ** 2 / 2
        for x, t in zip(xs, targets, strict=True):
            z = a * x + b  # log(1 + e^z) - t z, computed without overflow
            total += max(z, 0.0) + math.log1p(math.exp(-abs(z))) - t * z
        return total

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        ga, gb = RIDGE * (a - 1), 0.0  # the ridge pulls a toward the identity map
        haa, hab, hbb = RIDGE, 0.0, 1e-9
        for x, t in zip(xs, targets, strict=True):
            q = sigmoid(a * x + b)
            r, w = q - t, q * (1 - q)
            ga += r * x
            gb += r
            haa += w * x * x
            hab += w * x
            hbb += w
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        step = 1.0
        while step > 1e-6 and loss(a - step * da, b - step * db) > current:
            step /= 2
        if step <= 1e-6:
            break
        a, b = a - step * da, b - step * db
        previous, current = current, loss(a, b)
        if previous - current < 1e-12:
            break
    return a, b


def ece(p: Sequence[float], labels: Sequence[bool], bins: int = BINS) -> float:
    """Expected calibration error: the item-weighted |mean p - share of yes| over equal-width bins."""
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for value, label in zip(p, labels, strict=True):
        groups[min(bins - 1, int(value * bins))].append((value, label))
    total = sum(abs(sum(v for v, _ in g) - sum(y for _, y in g)) for g in groups if g)
    return total / max(1, len(p))


def brier(p: Sequence[float], labels: Sequence[bool]) -> float:
    return sum((v - float(y)) ** 2 for v, y in zip(p, labels, strict=True)) / max(1, len(p))


def held_out_split(labels: Sequence[bool], fraction: float) -> tuple[list[int], list[int]]:
    """(train, held out) indices: about `fraction` of each label's items held out, spread
    evenly through the order given (deterministic)."""
    train: list[int] = []
    held: list[int] = []
    for value in (False, True):
        indices = [i for i, y in enumerate(labels) if y == value]
        take = min(len(indices) - 1, max(1, round(fraction * len(indices))))  # one stays to fit on
        chosen = {indices[int((k + 0.5) * len(indices) / take)] for k in range(take)}
        held.extend(i for i in indices if i in chosen)
        train.extend(i for i in indices if i not in chosen)
    return sorted(train), sorted(held)


def fit_calibrations(
    results: Sequence[ItemResult],
    labels: Sequence[bool],
    question_texts: Mapping[str, str],
    models: Mapping[str, str],
    held_out_fraction: float,
) -> list[Calibration]:
    """One Platt map per (evaluator, question) of the scored labelled items, fitted on all
    but a held-out share of each label and judged on that share; refused fits are marked."""
    train, held = held_out_split(labels, held_out_fraction)
    fits = []
    for k, first in enumerate(results[0].scores):
        p = [result.scores[k].p_yes for result in results]
        a, b = fit_platt([p[i] for i in train], [labels[i] for i in train])
        raw, y = [p[i] for i in held], [labels[i] for i in held]
        after = [apply(a, b, value) for value in raw]
        fit = Calibration(
            evaluator=first.evaluator,
            model=models[first.evaluator],
            question=question_texts[first.question],
            question_id=first.question,
            a=a,
            b=b,
            train_items=len(train),
            held_out_items=len(held),
            ece_before=ece(raw, y),
            ece_after=ece(after, y),
            brier_before=brier(raw, y),
            brier_after=brier(after, y),
            fitted_at=time.time(),
        )
        accepted, warning = review(fit)
        fits.append(fit.model_copy(update={"accepted": accepted, "warning": warning}))
    return fits


def review(fit: Calibration) -> tuple[bool, str | None]:
    """Whether to apply a fit, and what to warn about. Refused: a map that turns p_yes around
    (a <= 0), or one that makes the held-out items both less calibrated (ECE) and less
    accurate (Brier score). Kept with a warning: one of the two worse."""
    if not fit.a > 0:
        return False, (
            f"refused: the fitted slope a = {fit.a:.3g} is not positive, so the map would turn p_yes "
            "around (on these items the evaluator's 'Yes' means 'no'); check the labels and the question"
        )
    ece_worse, brier_worse = fit.ece_after > fit.ece_before, fit.brier_after > fit.brier_before
    held_out = (
        f"ECE {fit.ece_before:.3f} -> {fit.ece_after:.3f}, Brier {fit.brier_before:.3f} -> "
        f"{fit.brier_after:.3f} on {fit.held_out_items} held-out items"
    )
    if ece_worse and brier_worse:
        return (
            False,
            f"refused: the fit makes the held-out items worse ({held_out}); send more labelled items",
        )
    if ece_worse or brier_worse:
        return True, f"kept, but one held-out measure got worse ({held_out}); more labelled items would help"
    return True, None


class CalibrationStore:
    """Fitted calibrations by (evaluator, question text), in a JSON file (None: memory only).

    A file that cannot be read as calibrations is never overwritten: the store starts empty,
    refuses to fit (`store_error` says why and how to fix it) and rewards are served as usual.
    """

    def __init__(self, path: Path | None, shared: SharedCalibrations | None = None) -> None:
        self.path = path
        self.shared = shared
        self._lock = threading.Lock()
        self._fits: dict[tuple[str, str], Calibration] = {}
        self.store_error: str | None = None
        if path is not None and path.is_file():
            try:
                for row in json.loads(path.read_text()):
                    fit = Calibration.model_validate(row)
                    self._fits[(fit.evaluator, fit.question)] = fit
            except (OSError, ValueError, TypeError) as exc:  # ValidationError and JSON errors too
                self._fits = {}
                self.store_error = (
                    f"{path} is not a calibrations file ({type(exc).__name__}: {str(exc)[:200]}); no "
                    f"calibrations are applied or fitted. Fix: move it aside (mv {path} {path}.broken) "
                    "and restart"
                )
                log.error("calibrations: %s", self.store_error)

    def refresh(self) -> None:
        """Take up what other replicas fitted (a no-op without a shared store)."""
        if self.shared is not None and self.store_error is None:
            fits = self.shared.read(self._fits)
            if fits is not None:
                with self._lock:
                    self._fits = fits

    def get(self, evaluator: str, question: str) -> Calibration | None:
        return self._fits.get((evaluator, question))

    def all(self) -> list[Calibration]:
        return sorted(self._fits.values(), key=lambda f: (f.evaluator, f.question_id))

    def put(self, fits: Sequence[Calibration]) -> None:
        if self.store_error is not None:
            raise RuntimeError(self.store_error)
        if self.shared is not None:
            self.shared.write(fits)  # raises while the store is down: not acknowledged
        with self._lock:
            for fit in fits:
                self._fits[(fit.evaluator, fit.question)] = fit
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps([f.model_dump() for f in self.all()], indent=1))
            os.replace(partial, self.path)  # a reader never sees half a file


_UNREAD = object()


class SharedCalibrations:
    """The fitted maps in a Redis hash (field: [evaluator, question] as JSON) and a version
    counter, so a replica reads the hash again only when another one has written to it."""

    def __init__(self, url: str, prefix: str, retry_s: float, timeout_s: float, on_error: Any = None) -> None:
        self._redis: Any = redis_client(url, timeout_s)
        self._prefix = prefix
        self._key, self._version_key = f"{prefix}calibrations", f"{prefix}calibrations:v"
        self._seen: object = _UNREAD
        self._epoch: str | None = None  # the store's epoch this replica's fits were offered to
        self._breaker = Breaker(retry_s)
        self._on_error = on_error
        self.url = url

    def read(self, mine: Mapping[tuple[str, str], Calibration]) -> dict[tuple[str, str], Calibration] | None:
        """Every replica's fits when they changed since the last read; None: unchanged or down."""
        if not self._breaker.may_ask():
            return None
        try:
            now = epoch(self._redis, self._prefix)
            if now != self._epoch:  # a new store (or one that lost its data): offer what we hold
                for fit in mine.values():
                    field = json.dumps([fit.evaluator, fit.question])
                    self._redis.hsetnx(self._key, field, fit.model_dump_json())
                if mine:
                    self._redis.incr(self._version_key)  # the others read again
                self._epoch, self._seen = now, _UNREAD
            version = self._redis.get(self._version_key)
            if version == self._seen:
                return None
            rows = self._redis.hgetall(self._key)
        except Exception as exc:  # redis errors, timeouts
            self._failed(exc)
            return None
        self._breaker.answered()
        self._seen = version
        fits = dict(mine)  # merged, never replaced: a store that lost its data wipes nothing
        for text in rows.values():
            try:
                fit = Calibration.model_validate_json(text)
            except ValueError as exc:
                log.warning("shared calibrations: an unreadable entry skipped: %s", exc)
                continue
            key = (fit.evaluator, fit.question)
            if key not in fits or fit.fitted_at >= fits[key].fitted_at:  # the latest fit wins
                fits[key] = fit
        return fits

    def write(self, fits: Sequence[Calibration]) -> None:
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                for fit in fits:
                    pipe.hset(self._key, json.dumps([fit.evaluator, fit.question]), fit.model_dump_json())
                pipe.incr(self._version_key)
                pipe.execute()
        except Exception as exc:
            self._failed(exc)
            raise StoreUnavailable(
                f"the shared state store at {self.url} did not answer ({type(exc).__name__}); the "
                "calibrations were fitted but not kept: retry when it is back"
            ) from None

    def _failed(self, exc: Exception) -> None:
        self._breaker.failed()
        log.error("shared calibrations at %s failed (%r)", self.url, exc)
        if self._on_error is not None:
            self._on_error()
