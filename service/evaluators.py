"""Evaluators addressed by name: each is a backend plus its own batcher."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from pathlib import Path
from typing import Any

from rlme.service.backends.base import Backend, build_task, score_now
from rlme.service.backends.request_shapes import ShapeChooser
from rlme.service.batcher import Batcher
from rlme.service.errors import EvaluatorBroken, NotReady, ServiceError
from rlme.service.metrics import Metrics
from rlme.service.prompting import SAMPLE_ITEM, SAMPLE_QUESTION
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


# Batches in the engine at once, unless configured: a transformers batch already uses every
# core; vLLM schedules several requests together, and remote servers each run their own.
DEFAULT_CONCURRENCY = {"transformers": 1, "vllm": 4, "remote": 4}


class Evaluator:
    def __init__(self, config: EvaluatorConfig, backend: Backend, metrics: Metrics, cache_dir: Path) -> None:
        self.config = config
        self.backend = backend
        self.cache_dir = cache_dir
        self.loaded = False
        self.generation = 0  # how many times the weights were reloaded
        self._identity: tuple[int, str] | None = None
        self.startup_label_mass: float | None = None  # set by the label check at load
        self._reload_lock = asyncio.Lock()
        concurrency = config.batching.max_concurrent_batches or DEFAULT_CONCURRENCY[config.backend]
        self.batcher = Batcher(
            config.name,
            backend,
            config.batching,
            on_batch=self._observe,
            concurrency=concurrency,
            on_wait=metrics.queue_wait.labels(config.name).observe,
        )
        self._metrics = metrics
        metrics.queue_depth.labels(config.name).set_function(lambda: self.batcher.queued_evaluations)
        metrics.evaluator_up.labels(config.name).set_function(
            lambda: float(self.loaded and self.status() == "ok")
        )
        self._watch_replicas()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def identity(self) -> str:
        """What the reward cache keys this evaluator's results by: its name, model, the model
        files' sizes and modification times, and its reload count."""
        if self._identity is None or self._identity[0] != self.generation:
            self._identity = (self.generation, model_identity(self.config, self.generation))
        return self._identity[1]

    def _watch_replicas(self) -> None:
        """rlme_remote_replica_up per server of a remote pool, and what request_shape auto has
        measured, read at each scrape."""
        for replica in getattr(self.backend, "replicas", []):
            gauge = self._metrics.replica_up.labels(self.name, replica.url)
            gauge.set_function(functools.partial(_replica_up, replica))
        chooser: ShapeChooser | None = getattr(self.backend, "shapes", None)
        if chooser is None:
            return
        for shape in chooser.shapes:
            rate = self._metrics.request_shape_rate.labels(self.name, shape)
            rate.set_function(functools.partial(chooser.rate, shape))
            used = self._metrics.request_shape_used.labels(self.name, shape)
            used.set_function(functools.partial(_in_use, chooser, shape))

    def _observe(self, evaluations: int, tasks: int, seconds: float) -> None:
        self._metrics.batch_evaluations.labels(self.name).observe(evaluations)
        self._metrics.batch_seconds.labels(self.name).observe(seconds)

    async def load(self) -> None:
        try:
            await _setup(self.backend)
            self.startup_label_mass = await check_labels(self.config, self.backend)
        except Exception:
            log.exception("evaluator %r failed to load", self.name)
            raise
        self.batcher.start()
        self.loaded = True

    async def reload(self, model: str | None) -> None:
        """Load new weights beside the old ones, then swap between two batches.

        Requests in flight finish on the old weights, queued ones are scored with the new:
        none is dropped. The tokenizer's label tokens must not change, since queued work
        was tokenized already. Once its last batch is done, the old engine is closed (a
        vLLM engine process, a remote pool's connections), so reloads do not pile them up.
        """
        async with self._reload_lock:
            config = self.config.model_copy(update={"model": model}) if model else self.config
            backend = build_backend(config, self.cache_dir)
            try:
                await _setup(backend)
                label_mass = await check_labels(config, backend)
                if self.loaded and backend.labels != self.backend.labels:
                    raise ValueError(
                        f"the new model's label tokens {backend.labels.yes_tokens}/"
                        f"{backend.labels.no_tokens} differ from the current ones; reload only "
                        "weights of the same tokenizer"
                    )
            except BaseException:  # the old weights keep serving; the new engine is let go
                await _close(backend)
                raise
            self.batcher.backend = backend  # read by the batcher at the start of each batch
            old, self.backend, self.config = self.backend, backend, config
            for replica in getattr(old, "replicas", []):
                self._metrics.replica_up.remove(self.name, replica.url)
            self._watch_replicas()
            self.generation += 1
            self.startup_label_mass = label_mass
            self._metrics.reloads.labels(self.name).inc()
            if not self.loaded:  # a reload can repair an evaluator that failed to load
                self.batcher.start()
                self.loaded = True
            log.info(
                "evaluator %r reloaded from %s (generation %d)", self.name, config.model, self.generation
            )
            await self.batcher.retire(old)
            await _close(old)

    def status(self) -> str:
        # Once loaded, the engine's own view: a dead vLLM engine or a pool with no replica up.
        return self.backend.health()

    def unavailable(self) -> ServiceError:
        """The error for a request to this evaluator while it is not loaded: 503 retryable
        while it loads (a remote pool waiting for its servers included), 503 not retryable
        once it failed: a wrong model folder does not heal by retrying."""
        status = self.status()
        if not status.startswith("failed to load"):  # loading, or checking its labels
            return NotReady(f"evaluator {self.name!r} is {status}")
        return EvaluatorBroken(
            f"evaluator {self.name!r} is not usable: {status}. Fix its configuration and restart the "
            f"service or reload it (POST /admin/evaluators/{self.name}/reload)"
        )


async def check_labels(config: EvaluatorConfig, backend: Backend) -> float:
    """P(yes labels) + P(no labels) after a sample evaluation; warns, with the fix, when low.

    A reasoning model whose template opens a <think> block, or a model that answers in
    another language, gives the labels almost no probability: its p_yes would compare two
    answers it never gives.
    """
    task = build_task(
        backend.tokenizer, config.system_prompt, SAMPLE_ITEM, [SAMPLE_QUESTION], config.chat_template_kwargs
    )
    [result] = await score_now(backend, [task])
    mass = result.scores[0].mass
    if mass < config.min_label_mass:
        log.warning(
            "evaluator %r: the labels %s/%s get only %.4f of the probability after the rendered prompt, "
            "so the model begins its answer with something else (a <think> block?). Fix: set "
            "chat_template_kwargs (e.g. {enable_thinking: false}) or yes_words/no_words the model "
            "answers with. Scores will be marked low_label_mass.",
            config.name,
            backend.labels.yes_tokens,
            backend.labels.no_tokens,
            mass,
        )
    return mass


async def _setup(backend: Backend) -> None:
    setup_async = getattr(backend, "setup_async", None)
    if setup_async is not None:
        await setup_async()
    else:
        await asyncio.to_thread(backend.setup)


def _in_use(chooser: ShapeChooser, shape: str) -> float:
    return float(chooser.best() == shape)


def _replica_up(replica: Any) -> float:
    return float(replica.up)


async def _close(backend: Backend) -> None:
    """Release an engine's own resources (vLLM's engine process, a remote pool's clients)."""
    close = getattr(backend, "aclose", None)
    if close is not None:
        await close()


class EvaluatorPool:
    def __init__(self, configs: list[EvaluatorConfig], cache_dir: Path, metrics: Metrics) -> None:
        self.evaluators = {
            c.name: Evaluator(c, build_backend(c, cache_dir), metrics, cache_dir) for c in configs
        }

    def get(self, name: str) -> Evaluator | None:
        return self.evaluators.get(name)

    async def load_all(self) -> None:
        # Local models one at a time: loading two at once only fights for the same cores.
        # Remote pools beside them: they may wait for their servers for a long time.
        async def load(evaluator: Evaluator) -> None:
            with contextlib.suppress(Exception):  # reported through /health; the others still load
                await evaluator.load()

        async def local() -> None:
            for evaluator in self.evaluators.values():
                if evaluator.config.backend != "remote":
                    await load(evaluator)

        remote = [load(e) for e in self.evaluators.values() if e.config.backend == "remote"]
        await asyncio.gather(local(), *remote)

    @property
    def ready(self) -> bool:
        return all(e.loaded for e in self.evaluators.values())

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop every batcher (batches in an engine get `grace_s`, then are aborted), then close
        the engines."""
        await asyncio.gather(*(e.batcher.stop(grace_s) for e in self.evaluators.values()))
        for evaluator in self.evaluators.values():
            await _close(evaluator.backend)


def model_identity(config: EvaluatorConfig, generation: int) -> str:
    """The evaluator's settings that change what it computes (all but batching), the model
    files' names, sizes and times (recursively), the reload count and rlme's version. A
    remote evaluator's weights live on its servers: reload it (or clear the cache) when
    they change."""
    from importlib.metadata import version

    path = Path(config.model)
    files: list[str] = []
    if path.exists():
        found = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in found:
            if f.is_file():
                stat = f.stat()
                files.append(
                    f"{f.relative_to(path) if path.is_dir() else f.name}:{stat.st_size}:{stat.st_mtime_ns}"
                )
    settings = config.model_dump(mode="json", exclude={"batching"})
    return json.dumps([settings, generation, files, version("rlme")], sort_keys=True)
