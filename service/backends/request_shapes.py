"""`request_shape: auto` for the remote backend: the shape of the requests chosen by measurement.

How fast an OpenAI-compatible engine scores a batch depends on how the batch is sent: one
list-prompt request (`batched`), every item's first question and then the rest (`waves`,
so the rest find the item's prefix cached), or one request per evaluation with many in
flight (`per_evaluation`). Which is fastest differs by engine, machine and workload
(docs/benchmarks.md, "GRPO-shaped requests"), so `auto` measures instead of assuming:
- throughput (prompt tokens a second of batch wall time) is only comparable between
  batches of one kind: a batch of 1,000-token prompts with shared prefixes runs at twice
  the tokens a second of one of 200-token prompts. So each kind of batch, by its prompt
  tokens an evaluation in powers of two (128-255, 256-511, ...), has its own trials and
  its own choice (measured: one choice for all, carried from 200-token to 1,000-token
  prompts, compared a fresh figure of one shape with stale ones of the others);
- the very first batch warms up (the first connection, the engine's first batch) and its
  time is not recorded; then every shape is tried TRIALS times in a balanced order,
  A B C C B A, so a machine that speeds up or slows down meanwhile favours no shape
  (measured: in plain rotation on a 2-core CPU the shape tried first read half as fast,
  and the one tried last won a 4% difference it did not have);
- from then on a batch gets the shape with the highest recent throughput in its kind, the
  median of its last WINDOW batches;
- every EXPLORE_EVERY-th batch of a kind re-tries the other shapes in turn, so a change (a
  busier server, another engine behind the URL) is noticed, and a shape whose trials all
  failed is tried again.
A batch that fails records nothing. Results do not depend on the shape (tested); only speed
and the `cached_prompt_tokens` lower bound do.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

SHAPES = ("waves", "batched", "per_evaluation")
TRIALS = 2
WINDOW = 5
EXPLORE_EVERY = 10


def kind_of(tokens_per_evaluation: float) -> int:
    """The kind of a batch: log2 of its prompt tokens an evaluation, rounded down."""
    return int(math.log2(max(tokens_per_evaluation, 1.0)))


class _Kind:
    """Trials, then the fastest, for one kind of batch."""

    def __init__(self, shapes: tuple[str, ...]) -> None:
        self.shapes = shapes
        self.rates: dict[str, deque[float]] = {shape: deque(maxlen=WINDOW) for shape in shapes}
        self.started = dict.fromkeys(shapes, 0)  # batches given each shape so far
        self.batches = 0
        # TRIALS passes over the shapes, every other one reversed: A B C C B A ...
        self.plan = [shape for t in range(TRIALS) for shape in (shapes if t % 2 == 0 else shapes[::-1])]

    def pick(self) -> str:
        self.batches += 1
        least = min(self.shapes, key=lambda s: self.started[s])
        if self.batches <= len(self.plan):
            shape = self.plan[self.batches - 1]
        elif self.batches % EXPLORE_EVERY == 0:  # first: a shape whose trials all failed is retried
            others = [s for s in self.shapes if s != self.best()]
            shape = others[(self.batches // EXPLORE_EVERY) % len(others)]
        else:  # the fastest so far (trials still in flight: the least tried)
            shape = self.best() or least
        self.started[shape] += 1
        return shape

    def best(self) -> str | None:
        measured = [s for s in self.shapes if self.rates[s]]
        if not measured:
            return None
        return max(measured, key=lambda s: statistics.median(self.rates[s]))


WARM_UP = "warm-up"  # what `pick` returns for the first batch of all: send it as the first shape


class ShapeChooser:
    """`pick` a shape for a batch, `record` how fast it went. The very first batch gets
    WARM_UP: the caller sends it as `shapes[0]` and records it under that name, so only
    that batch is left out, whichever batch finishes first."""

    def __init__(self, shapes: tuple[str, ...] = SHAPES) -> None:
        self.shapes = shapes
        self.kinds: dict[int, _Kind] = {}
        self.current = 0  # the kind of the latest batch: what the metrics show
        self.warmed = False

    def _kind(self, kind: int) -> _Kind:
        return self.kinds.setdefault(kind, _Kind(self.shapes))

    def pick(self, tokens_per_evaluation: float = 1.0) -> str:
        self.current = kind_of(tokens_per_evaluation)
        if not self.warmed:
            self.warmed = True
            return WARM_UP
        return self._kind(self.current).pick()

    def record(self, shape: str, tokens: int, seconds: float, tokens_per_evaluation: float = 1.0) -> None:
        if shape != WARM_UP:
            self._kind(kind_of(tokens_per_evaluation)).rates[shape].append(tokens / max(seconds, 1e-6))

    @property
    def started(self) -> dict[str, int]:
        """Batches given each shape, over every kind."""
        return {s: sum(kind.started[s] for kind in self.kinds.values()) for s in self.shapes}

    def best(self) -> str | None:
        """The shape the latest kind of batch now gets (reading changes nothing)."""
        kind = self.kinds.get(self.current)
        return kind.best() if kind is not None else None

    def rate(self, shape: str) -> float:
        """The throughput `best` compares for this shape in the latest kind; 0 before measured."""
        kind = self.kinds.get(self.current)
        rates = kind.rates[shape] if kind is not None else ()
        return statistics.median(rates) if rates else 0.0
