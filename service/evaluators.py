"""Evaluators addressed by name: each is a backend plus its own batcher."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from rlme.service.backends.base import Backend
from rlme.service.batcher import Batcher
from rlme.service.metrics import Metrics
from rlme.service.settings import EvaluatorConfig

log = logging.getLogger(__name__)


def build_backend(config: EvaluatorConfig, cache_dir: Path) -> Backend:
    if config.backend == "transformers":
        from rlme.service.backends.transformers_backend import TransformersBackend

        return TransformersBackend(config, cache_dir)
    if config.backend == "vllm":
        from rlme.service.backends.vllm_backend import VLLMBackend

        return VLLMBackend(config, cache_dir)
    if config.backend == "remote":
        from rlme.service.backends.remote_backend import RemoteBackend

        return RemoteBackend(config, cache_dir)
    raise ValueError(f"evaluator {config.name!r}: unknown backend {config.backend!r}")


class Evaluator:
    def __init__(self, config: EvaluatorConfig, backend: Backend, metrics: Metrics) -> None:
        self.config = config
        self.backend = backend
        self.loaded = False
        self.batcher = Batcher(config.name, backend, config.batching, on_batch=self._observe)
        self._metrics = metrics
        metrics.queue_depth.labels(config.name).set_function(lambda: self.batcher.queued_evaluations)

    @property
    def name(self) -> str:
        return self.config.name

    def _observe(self, evaluations: int, tasks: int, seconds: float) -> None:
        self._metrics.batch_evaluations.labels(self.name).observe(evaluations)
        self._metrics.batch_seconds.labels(self.name).observe(seconds)

    async def load(self) -> None:
        try:
            setup_async = getattr(self.backend, "setup_async", None)
            if setup_async is not None:
                await setup_async()
            else:
                await asyncio.to_thread(self.backend.setup)
        except Exception:
            log.exception("evaluator %r failed to load", self.name)
            raise
        self.batcher.start()
        self.loaded = True

    def status(self) -> str:
        return "ok" if self.loaded else self.backend.health()


class EvaluatorPool:
    def __init__(self, configs: list[EvaluatorConfig], cache_dir: Path, metrics: Metrics) -> None:
        self.evaluators = {c.name: Evaluator(c, build_backend(c, cache_dir), metrics) for c in configs}

    def get(self, name: str) -> Evaluator | None:
        return self.evaluators.get(name)

    async def load_all(self) -> None:
        # One at a time: loading two models at once only fights for the same cores.
        for evaluator in self.evaluators.values():
            try:
                await evaluator.load()
            except Exception:  # reported through /health; the others still load
                continue

    @property
    def ready(self) -> bool:
        return all(e.loaded for e in self.evaluators.values())

    async def stop(self) -> None:
        for evaluator in self.evaluators.values():
            await evaluator.batcher.stop()
