"""Remote backend: a pool of vLLM OpenAI-compatible servers behind one reward service.

Judges' generation is one `POST {url}/v1/completions` per prompt with `n` samples (the
server batches decoding continuously).

Scoring sends each flushed batch to a replica as `POST {url}/v1/completions` requests
(token ids, `max_tokens=1`, `logprob_token_ids` = the label ids, which vLLM >= 0.32
answers with exactly those tokens' full-vocabulary log-probs), shaped by
`remote.request_shape`: `waves` (list-prompt requests of every item's first question,
then of all its other questions, which find the item's prefix in the server's prefix
cache), `batched` (one list-prompt request), `per_evaluation` (one request each, up to
max_concurrency in flight), or `auto`, the default: the fastest of the three, measured on
the live traffic (request_shapes.py). Which wins differs by engine, machine and workload
(measured in `bench/bench_grpo_peers.py`). Token ids, not text, so the server scores the
very tokens the transformers backend would.

Routing: all questions of an item go to one replica, chosen by rendezvous hashing of the
item's shared prefix over the healthy replicas, so that replica's prefix cache holds the
item. A replica that fails (connection error, timeout, 5xx) is taken out of the pool and
the work goes to the next replica in the item's order; a background check puts it back
once `GET /health` answers 200 and its tokenizer still matches. At start-up, and on
every return, the replica's tokenization of a rendered prompt and of each label variant
is compared with the local tokenizer (the `model` folder must hold the servers' model
or at least its tokenizer); a replica that disagrees is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from rlme.service.backends.base import (
    EventLoopState,
    Generation,
    GenerationResult,
    GenerationTask,
    LabelLogprobs,
    ScoringTask,
    TaskResult,
    cut_at_stop,
    flat_label_ids,
    logsumexp,
    until_deadline,
)
from rlme.service.backends.replicas import (
    KEEPALIVE_EXPIRY_S,
    Replica,
    ReplicaBusy,
    ReplicaError,
    ReplicaMismatch,
    send,
)
from rlme.service.backends.request_shapes import WARM_UP, ShapeChooser
from rlme.service.model_store import resolve_model
from rlme.service.prompting import SAMPLE_ITEM, SAMPLE_QUESTION, encode, label_tokens, render
from rlme.service.settings import EvaluatorConfig, RemoteOptions

log = logging.getLogger(__name__)

_HEALTH_TIMEOUT_S = 5.0


class RemoteBackend(EventLoopState):
    def __init__(
        self,
        config: EvaluatorConfig,
        cache_dir: Path,
        *,
        transport: httpx.AsyncBaseTransport | None = None,  # tests pass an httpx.MockTransport
    ) -> None:
        if config.remote is None:
            raise ValueError(f"evaluator {config.name!r}: backend 'remote' needs `remote: {{urls: [...]}}`")
        urls = [url.rstrip("/") for url in config.remote.urls]
        if len(set(urls)) != len(urls):
            raise ValueError(f"evaluator {config.name!r}: remote.urls has duplicates: {urls}")
        bad = [url for url in urls if not url.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"evaluator {config.name!r}: remote.urls must start with http(s)://, got {bad}")
        super().__init__(config, cache_dir)
        self.options: RemoteOptions = config.remote
        self.replicas = [Replica(url, asyncio.Semaphore(self.options.max_concurrency)) for url in urls]
        self._client: httpx.AsyncClient | None = None
        self._transport = transport
        self._checker: asyncio.Task[None] | None = None
        self.shapes = ShapeChooser() if self.options.request_shape == "auto" else None  # read by metrics

    # --- start-up and health -------------------------------------------------------------

    async def setup_async(self) -> None:
        from transformers import AutoTokenizer

        try:
            path = await asyncio.to_thread(resolve_model, self.config.model, self.cache_dir)
            tokenizer: Any = await asyncio.to_thread(AutoTokenizer.from_pretrained, path)
            self._labels = label_tokens(tokenizer, self.config.yes_words, self.config.no_words)
            self._tokenizer = tokenizer
            key = self.options.api_key
            if key is None and self.options.api_key_env is not None:
                key = os.environ.get(self.options.api_key_env) or None
                if key is None:  # e.g. an optional Secret key that is not there: no key
                    log.warning(
                        "evaluator %r: remote.api_key_env names $%s, which is not set; "
                        "calling the servers without a key",
                        self.config.name,
                        self.options.api_key_env,
                    )
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=self.options.timeout_s,
                # Room beside the scoring requests for the health checks.
                limits=httpx.Limits(
                    max_connections=(self.options.max_concurrency + 2) * len(self.replicas),
                    keepalive_expiry=KEEPALIVE_EXPIRY_S,
                ),
                transport=self._transport,
            )
            await self._wait_for_a_replica()
        except Exception as exc:
            self._status = f"failed to load {self.config.model!r}: {exc}"
            raise
        self._update_max_model_len()
        self._checker = asyncio.create_task(self._recheck_forever(), name=f"replicas-{self.config.name}")
        self._status = "ok"
        log.info(
            "evaluator %r: %d of %d remote replicas up",
            self.config.name,
            sum(r.up for r in self.replicas),
            len(self.replicas),
        )

    async def _wait_for_a_replica(self) -> None:
        """Check every replica until one is up, backing off 0.5 s, 1 s, ... up to
        `health_interval_s`: replicas (or the router) that start after the service, as on a
        first deploy, are waited for, never "failed to load" forever. A replica serving
        another tokenizer cannot heal: that raises at once."""
        delay = 0.5
        while True:
            await asyncio.gather(*(self._check(replica) for replica in self.replicas))
            mismatched = [r for r in self.replicas if r.rejected]
            if mismatched:
                raise ValueError(
                    "; ".join(f"{r.url}: {r.problem}" for r in mismatched)
                    + f" (evaluator {self.config.name!r}: `model` must be the servers' model or tokenizer)"
                )
            if any(r.up for r in self.replicas):
                return
            self._status = "loading: waiting for a remote replica: " + "; ".join(
                f"{r.url}: {r.problem}" for r in self.replicas
            )
            log.warning("evaluator %r: %s; next check in %.1f s", self.config.name, self._status, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.options.health_interval_s)

    def _update_max_model_len(self) -> None:
        limits = [r.max_model_len for r in self.replicas if r.max_model_len]
        if self.config.max_model_len:
            limits.append(self.config.max_model_len)
        fallback = int(getattr(self._tokenizer, "model_max_length", 2048))
        self._max_model_len = min(limits) if limits else fallback

    async def _check(self, replica: Replica) -> None:
        """A replica in the pool must answer /health; one out of it must also pass `_verify`."""
        try:
            client = self._require(self._client)
            path = self.options.health_path
            answer = await send(client, "GET", f"{replica.url}{path}", timeout=_HEALTH_TIMEOUT_S)
            if answer.status_code != 200:
                raise ReplicaError(f"{path} answered {answer.status_code}")
            if not replica.up:  # new, or back: it may have restarted with another model
                await self._verify(replica)
        except ReplicaMismatch as exc:
            replica.up, replica.rejected, replica.problem = False, True, f"mismatch: {exc}"
            log.error("evaluator %r: replica %s is not usable: %s", self.config.name, replica.url, exc)
        except (httpx.HTTPError, ReplicaError, ValueError, KeyError) as exc:
            self._take_out(replica, f"health check failed: {exc!r}")
        else:
            if not replica.up:
                log.info("evaluator %r: replica %s is in the pool", self.config.name, replica.url)
            replica.up, replica.problem = True, ""

    async def _verify(self, replica: Replica) -> None:
        """Served model and tokenization, the labels' included."""
        client = self._require(self._client)
        models = (await send(client, "GET", f"{replica.url}/v1/models", timeout=_HEALTH_TIMEOUT_S)).json()
        models = models["data"]
        served = [m["id"] for m in models]
        wanted = self.options.served_model
        if wanted is not None and wanted not in served:
            raise ReplicaMismatch(f"serves {served}, not served_model {wanted!r}")
        card = next(m for m in models if m["id"] == (wanted or served[0]))
        replica.model, replica.max_model_len = card["id"], card.get("max_model_len")
        # The server must split text into the same tokens as we do, labels included.
        tokenizer, labels, config = self.tokenizer, self.labels, self.config
        sample = render(
            tokenizer, config.system_prompt, SAMPLE_ITEM, SAMPLE_QUESTION, config.chat_template_kwargs
        )
        label_texts = [self._tokenizer.decode([i]) for i in (*labels.yes_ids, *labels.no_ids)]
        for text in [sample, *label_texts]:
            body = {"model": replica.model, "prompt": text, "add_special_tokens": False}
            answer = await send(
                client, "POST", f"{replica.url}/tokenize", json=body, timeout=_HEALTH_TIMEOUT_S
            )
            if answer.status_code == 404:
                log.warning("replica %s has no /tokenize; tokenization is not checked", replica.url)
                return
            answer.raise_for_status()
            theirs, ours = answer.json()["tokens"], encode(tokenizer, text)
            if theirs != ours:
                raise ReplicaMismatch(f"tokenizes {text[:40]!r} as {theirs[:12]}..., we get {ours[:12]}...")

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            await asyncio.gather(*(self._check(r) for r in self.replicas if not r.rejected))
            self._update_max_model_len()

    def _take_out(self, replica: Replica, reason: str) -> None:
        if replica.up:
            log.warning("evaluator %r: replica %s taken out: %s", self.config.name, replica.url, reason)
        replica.up, replica.problem = False, reason

    def health(self) -> str:
        if self._status != "ok":
            return self._status
        if any(r.up for r in self.replicas):
            return "ok"
        return "no remote replica is up: " + "; ".join(f"{r.url}: {r.problem}" for r in self.replicas)

    async def aclose(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._client is not None:
            await self._client.aclose()

    # --- scoring -------------------------------------------------------------------------

    def route(self, task: ScoringTask | GenerationTask) -> list[Replica]:
        """Replicas for this work, best first: rendezvous order of the hash of its prefix."""
        shared = task.prompt if isinstance(task, GenerationTask) else task.sequences[0][: task.prefix_len]
        prefix = array("i", shared).tobytes()

        def weight(replica: Replica) -> bytes:
            return hashlib.blake2b(prefix + replica.key, digest_size=8).digest()

        return sorted(self.replicas, key=weight, reverse=True)

    async def score_async(self, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        return await self._in_groups(tasks, self._score_group)

    async def generate_async(self, tasks: Sequence[GenerationTask]) -> list[GenerationResult]:
        return list(
            await asyncio.gather(
                *(until_deadline(task, self._on_a_replica(task, self._generate)) for task in tasks)
            )
        )

    async def _on_a_replica(self, task: Any, run: Any) -> Any:
        """`run(replica, task)` on the task's replicas in route order until one answers."""
        return (await self._in_groups([task], lambda replica, tasks: self._one(run, replica, tasks)))[0]

    @staticmethod
    async def _one(run: Any, replica: Replica, tasks: list[Any]) -> list[Any]:
        return [await run(replica, tasks[0])]

    async def _failover(self, started: float, errors: list[str], delay: float) -> bool:
        """No replica can take the work now: wait `delay`, re-check them all and say whether
        to try again (False once `failover_wait_s` has passed). A vllm-router in front of
        the servers needs this: it answers 5xx while it fails over from a dead server."""
        remaining = self.options.failover_wait_s - (time.monotonic() - started)
        if remaining <= 0:
            return False
        delay = min(delay, remaining)
        log.warning("evaluator %r: no replica could do the work (%s); retrying in %.1f s",
                    self.config.name, "; ".join(errors[-3:]), delay)  # fmt: skip
        await asyncio.sleep(delay)
        await asyncio.gather(*(self._check(r) for r in self.replicas if not r.rejected))
        return True

    async def _in_groups(self, tasks: Sequence[ScoringTask], run: Any) -> list[Any]:
        """`run(replica, tasks)` once per replica, on the tasks it comes first for; a group
        whose replica fails moves on to each of its tasks' next replica in route order."""
        results: list[Any] = [None] * len(tasks)
        pending, failed, errors = list(range(len(tasks))), set[str](), list[str]()
        outage: float | None = None  # when no replica could first take a task
        delay = 0.5
        while pending:
            groups: dict[str, tuple[Replica, list[int]]] = {}
            for i in pending:
                replica = next((r for r in self.route(tasks[i]) if r.up and r.url not in failed), None)
                if replica is None:  # no replica left for this task: wait for one, then retry all
                    outage = outage or time.monotonic()
                    if not await self._failover(outage, errors, delay):
                        raise ReplicaError(
                            "no remote replica could do the work: " + ("; ".join(errors) or "none is up")
                        )
                    failed.clear()
                    delay = min(2 * delay, self.options.health_interval_s)
                    break
                groups.setdefault(replica.url, (replica, []))[1].append(i)
            else:
                pending = await self._run_groups(run, tasks, groups, results, failed, errors)
        return results

    async def _run_groups(
        self,
        run: Any,
        tasks: Sequence[Any],
        groups: dict[str, tuple[Replica, list[int]]],
        results: list[Any],
        failed: set[str],
        errors: list[str],
    ) -> list[int]:
        """Each group on its replica; fills `results` and returns the tasks still to do."""
        outcomes = await asyncio.gather(
            *(run(replica, [tasks[i] for i in group]) for replica, group in groups.values()),
            return_exceptions=True,
        )
        pending = []
        for (replica, group), outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, ReplicaError):
                if not isinstance(outcome, ReplicaBusy):  # a busy replica stays in the pool
                    self._take_out(replica, str(outcome))
                failed.add(replica.url)
                errors.append(f"{replica.url}: {outcome}")
                pending += group
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                for i, result in zip(group, outcome, strict=True):
                    results[i] = result
        return pending

    async def _score_group(self, replica: Replica, tasks: list[ScoringTask]) -> list[TaskResult]:
        """Every item's first question, then the rest (which find the item's prefix cached);
        or all at once, in one list-prompt request (`batched`) or one request each, at most
        max_concurrency in flight (`per_evaluation`)."""
        first = [(t, 0, task.sequences[0]) for t, task in enumerate(tasks)]
        rest = [(t, k, s) for t, task in enumerate(tasks) for k, s in enumerate(task.sequences) if k]
        tokens = sum(task.prompt_tokens for task in tasks)
        tokens_each = tokens / max(1, sum(task.evaluations for task in tasks))  # the batch's kind
        picked = self.shapes.pick(tokens_each) if self.shapes else self.options.request_shape
        shape = self.shapes.shapes[0] if self.shapes and picked == WARM_UP else picked
        started = time.monotonic()
        waves = (first, rest) if shape == "waves" else (first + rest,)
        per_request = 1 if shape == "per_evaluation" else self.options.max_batch_prompts
        scores: dict[tuple[int, int], LabelLogprobs] = {}
        cached = [0] * len(tasks)
        for wave in waves:
            by_labels: dict[tuple[tuple[int, ...], ...], list[tuple[int, int, tuple[int, ...]]]] = {}
            for entry in wave:
                by_labels.setdefault(tasks[entry[0]].labels_or(self.labels), []).append(entry)
            requests = [
                (labels, entries[at : at + per_request])
                for labels, entries in by_labels.items()
                for at in range(0, len(entries), per_request)
            ]
            answers = await asyncio.gather(
                *(self._complete(replica, [s for _, _, s in part], labels) for labels, part in requests)
            )
            for (_, part), (labelled, cache_hits) in zip(requests, answers, strict=True):
                for (t, k, _), label in zip(part, labelled, strict=True):
                    scores[t, k] = label
                # vLLM (0.32) reports the cache hits of a list-prompt request's *last* prompt
                # only (serving.py: `last_final_res.num_cached_tokens`): they are that
                # prompt's task's; the others' hits are not reported, so on this backend
                # `cached_prompt_tokens` is a lower bound.
                cached[part[-1][0]] += cache_hits
        if self.shapes:
            self.shapes.record(picked, tokens, time.monotonic() - started, tokens_each)
        return [
            TaskResult(tuple(scores[t, k] for k in range(task.evaluations)), cached[t])
            for t, task in enumerate(tasks)
        ]

    async def _post(self, replica: Replica, body: dict[str, Any]) -> Any:
        """POST /v1/completions; ReplicaError when another replica may do better."""
        client = self._require(self._client)
        async with replica.limit:
            try:
                answer = await send(client, "POST", f"{replica.url}/v1/completions", json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                raise ReplicaError(repr(exc)) from exc
        if answer.status_code in (408, 429):
            raise ReplicaBusy(f"/v1/completions answered {answer.status_code}")
        if answer.status_code >= 500:
            raise ReplicaError(f"/v1/completions answered {answer.status_code}")
        if answer.status_code != 200:  # our request is wrong; another replica would say the same
            raise ValueError(
                f"{replica.url}/v1/completions answered {answer.status_code}: {answer.text[:500]}"
            )
        try:  # a replica that answers garbage is as broken as one that answers 500
            parsed = answer.json()
        except ValueError as exc:
            raise ReplicaError(f"/v1/completions answered 200 with a body that is not JSON: {exc}") from exc
        if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
            raise ReplicaError("/v1/completions answered 200 without a `choices` list")
        return parsed

    async def _generate(self, replica: Replica, task: GenerationTask) -> GenerationResult:
        s = task.sampling
        body: dict[str, Any] = {
            "model": replica.model,
            "prompt": list(task.prompt),
            "n": task.samples,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stop": list(s.stop),
            "seed": s.seed,
            "skip_special_tokens": True,
            "include_stop_str_in_output": False,
            "return_token_ids": True,
        }
        result = await self._post(replica, body)
        choices = sorted(result["choices"], key=lambda c: c["index"])
        if len(choices) != task.samples:
            raise ValueError(f"{replica.url} returned {len(choices)} samples for n={task.samples}")
        per_sample = int(result.get("usage", {}).get("completion_tokens") or 0) // task.samples
        samples = [
            Generation(
                text=cut_at_stop(c["text"], s.stop)[0],
                tokens=len(c["token_ids"]) if c.get("token_ids") is not None else per_sample,
                finish_reason="length" if c.get("finish_reason") == "length" else "stop",
            )
            for c in choices
        ]
        return GenerationResult(samples=tuple(samples))

    async def _complete(
        self, replica: Replica, prompts: list[tuple[int, ...]], labels: tuple[tuple[int, ...], ...]
    ) -> tuple[list[LabelLogprobs], int]:
        """The labels' log-probs after each prompt (one request), and the server's cache hits."""
        label_ids = flat_label_ids(labels)
        body = {
            "model": replica.model,
            "prompt": [list(p) for p in prompts],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": len(label_ids),
            "logprob_token_ids": label_ids,
            "return_tokens_as_token_ids": True,  # keys "token_id:N", unambiguous
        }
        result = await self._post(replica, body)
        choices = sorted(result["choices"], key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise ValueError(f"{replica.url} returned {len(choices)} choices for {len(prompts)} prompts")
        labelled = []
        for choice in choices:
            step = choice["logprobs"]["top_logprobs"][0]
            logps = {int(key.removeprefix("token_id:")): value for key, value in step.items()}
            missing = [i for i in label_ids if i not in logps]
            if missing:
                raise ValueError(
                    f"{replica.url} returned no log-probs for label ids {missing}; it needs vLLM >= 0.32"
                )
            labelled.append(LabelLogprobs(tuple(logsumexp([logps[i] for i in ids]) for ids in labels)))
        details = result.get("usage", {}).get("prompt_tokens_details") or {}
        return labelled, int(details.get("cached_tokens") or 0)
