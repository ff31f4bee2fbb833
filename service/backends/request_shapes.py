"""`request_shape: auto` for the remote backend: the shape of the requests chosen by measurement.

How fast an OpenAI-compatible engine scores a batch depends on how the batch is sent: one
list-prompt request (`batched`), every item's first question and then the rest (`waves`,
so the rest find the item's prefix cached), or one request per evaluation with many in
flight (`per_evaluation`). Which is fastest differs by engine, machine and workload
(docs/benchmarks.md, "GRPO-shaped requests"), so `auto` measures instead of assuming:
- the first batch warms up (the first connection, the engine's first batch) and its time
  is not recorded; then every shape is tried TRIALS times in a balanced order, A B C C B A,
  so a machine that speeds up or slows down meanwhile favours no shape (measured: in plain
  rotation on a 2-core CPU, the shape tried first read half as fast, and the last one won
  a 4% difference it did not have);
- from then on a batch gets the shape with the highest recent throughput: prompt tokens a
  second of batch wall time, the median of its last WINDOW batches;
- every EXPLORE_EVERY-th batch re-tries the other shapes in turn, so a change (another
  workload, a busier server) is noticed.
A batch that fails records nothing. Results do not depend on the shape (tested); only speed
and the `cached_prompt_tokens` lower bound do.
"""

from __future__ import annotations

import statistics
from collections import deque

SHAPES = ("waves", "batched", "per_evaluation")
TRIALS = 2
WINDOW = 5
EXPLORE_EVERY = 10


class ShapeChooser:
    def __init__(self, shapes: tuple[str, ...] = SHAPES) -> None:
        self.shapes = shapes
        self.rates: dict[str, deque[float]] = {shape: deque(maxlen=WINDOW) for shape in shapes}
        self.started = dict.fromkeys(shapes, 0)  # batches given each shape so far
        self.batches = 0
        # the warm-up batch, then A B C C B A ...: TRIALS passes, every other one reversed
        passes = [shapes if t % 2 == 0 else shapes[::-1] for t in range(TRIALS)]
        self.plan = [shapes[0], *(shape for order in passes for shape in order)]
        self.unrecorded = 1  # the first batch to finish is the warm-up

    def pick(self) -> str:
        self.batches += 1
        least = min(self.shapes, key=lambda s: self.started[s])
        if self.batches <= len(self.plan):
            shape = self.plan[self.batches - 1]
        elif any(not rates for rates in self.rates.values()):  # trials still in flight
            shape = self.best() or least
        elif self.batches % EXPLORE_EVERY == 0:
            others = [s for s in self.shapes if s != self.best()]
            shape = others[(self.batches // EXPLORE_EVERY) % len(others)]
        else:
            shape = self.best() or least
        self.started[shape] += 1
        return shape

    def best(self) -> str | None:
        measured = [s for s in self.shapes if self.rates[s]]
        if not measured:
            return None
        return max(measured, key=lambda s: statistics.median(self.rates[s]))

    def rate(self, shape: str) -> float:
        """The throughput `best` compares for this shape; 0 before it was measured."""
        return statistics.median(self.rates[shape]) if self.rates[shape] else 0.0

    def record(self, shape: str, tokens: int, seconds: float) -> None:
        if self.unrecorded:
            self.unrecorded -= 1
            return
        self.rates[shape].append(tokens / max(seconds, 1e-6))
