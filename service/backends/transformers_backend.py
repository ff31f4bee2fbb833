"""Hugging Face transformers backend (CPU, or CUDA when present), in process.

Prefix sharing without copying caches: an item's K questions are packed into one row,
`prefix + suffix_1 + ... + suffix_K`, with a block attention mask (each suffix sees the
prefix and itself, never another suffix) and position ids that restart after the prefix
for every suffix. The prefix is computed once and its keys/values serve every question;
the result equals scoring each question alone up to float rounding. The lm_head runs only
at the last token of each suffix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlme.service.backends.base import (
    Generation,
    GenerationResult,
    GenerationTask,
    LabelLogprobs,
    LoadedState,
    ScoringTask,
    TaskResult,
    cut_at_stop,
)
from rlme.service.model_store import resolve_model
from rlme.service.prompting import label_tokens
from rlme.service.settings import EvaluatorConfig

log = logging.getLogger(__name__)

# Greedy prompts decoded together in one generate() call (decoding is memory-bound: a
# batch of 16 costs little more per step than one).
_GENERATE_ROWS = 16

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersBackend(LoadedState):
    def __init__(self, config: EvaluatorConfig, cache_dir: Path) -> None:
        super().__init__(config, cache_dir)
        self._model: Any = None
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"evaluator {config.name!r}: device {device!r} but CUDA is not available")
        self.device = torch.device(device)
        self.max_forward_tokens = config.max_forward_tokens or (32768 if self.device.type == "cuda" else 2048)
        if config.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = _DTYPES[config.dtype]

    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            path = resolve_model(self.config.model, self.cache_dir)
            tokenizer: Any = AutoTokenizer.from_pretrained(path)
            labels = label_tokens(tokenizer, self.config.yes_words, self.config.no_words)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, attn_implementation="sdpa")
        except Exception as exc:
            self._status = f"failed to load: {exc}"
            raise
        model = model.to(self.device).eval()  # type: ignore[arg-type]
        self._tokenizer, self._labels, self._model = tokenizer, labels, model
        self._max_model_len = self.config.max_model_len or int(
            getattr(model.config, "max_position_embeddings", 2048)
        )
        self._status = "ok"
        log.info("evaluator %r loaded from %s on %s (%s)", self.config.name, path, self.device, self.dtype)

    def health(self) -> str:
        return self._status

    @torch.inference_mode()
    def score(self, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        model = self._require(self._model)
        if not self.config.prefix_sharing:
            return [self._score_split(task) for task in tasks]
        results: list[TaskResult | None] = [None] * len(tasks)
        for group in self._micro_batches(tasks):
            for index, result in zip(
                group, self._score_packed(model, [tasks[i] for i in group]), strict=True
            ):
                results[index] = result
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def generate(self, tasks: Sequence[GenerationTask]) -> list[GenerationResult]:
        """Greedy tasks with the same limits are decoded together, left-padded, up to
        `_GENERATE_ROWS` prompts a pass; a sampled task is decoded alone, its samples together.

        A sampled task is never batched with another task, so a seeded task gives the same
        samples whatever else is queued: the global torch generator is seeded per task (the
        batcher runs one transformers batch at a time).
        """
        model = self._require(self._model)
        results: list[GenerationResult | None] = [None] * len(tasks)
        greedy: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, task in enumerate(tasks):
            if task.sampling.temperature > 0:
                results[i] = self._decode(model, [task])[0]
            else:
                greedy.setdefault((task.sampling.max_tokens, task.sampling.stop), []).append(i)
        for indices in greedy.values():
            for start in range(0, len(indices), _GENERATE_ROWS):
                chunk = indices[start : start + _GENERATE_ROWS]
                for i, result in zip(chunk, self._decode(model, [tasks[i] for i in chunk]), strict=True):
                    results[i] = result
        return [r for r in results if r is not None]

    def _decode(self, model: Any, tasks: Sequence[GenerationTask]) -> list[GenerationResult]:
        """One `model.generate`: one sampled task (n samples), or greedy tasks of one kind."""
        from transformers import GenerationConfig

        s = tasks[0].sampling
        sampled = s.temperature > 0
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = next(iter(eos_ids), 0)
        config = GenerationConfig(
            max_new_tokens=s.max_tokens,
            do_sample=sampled,
            temperature=s.temperature if sampled else None,
            top_p=s.top_p if sampled else None,
            top_k=None,
            num_return_sequences=tasks[0].samples if sampled else 1,
            eos_token_id=list(eos_ids) or None,
            pad_token_id=pad,
            stop_strings=list(s.stop) or None,
        )
        if s.seed is not None:
            torch.manual_seed(s.seed)
        width = max(len(t.prompt) for t in tasks)
        prompt = torch.full((len(tasks), width), pad, dtype=torch.long)  # (B, P), padded on the left
        mask = torch.zeros((len(tasks), width), dtype=torch.long)  # (B, P)
        for b, task in enumerate(tasks):
            prompt[b, width - len(task.prompt) :] = torch.tensor(task.prompt)
            mask[b, width - len(task.prompt) :] = 1
        output = model.generate(
            prompt.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            tokenizer=self.tokenizer,
        )  # (B * n, P + T)
        samples = []
        for row in output[:, width:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), None)
            ids = row[:end] if end is not None else row
            text, stopped = cut_at_stop(self._tokenizer.decode(ids, skip_special_tokens=True), s.stop)
            finished = stopped or end is not None
            samples.append(
                Generation(text=text, tokens=len(ids), finish_reason="stop" if finished else "length")
            )
        if sampled:
            return [GenerationResult(samples=tuple(samples))]
        # Greedy: every sample of a task is the same continuation.
        return [
            GenerationResult(samples=(sample,) * task.samples)
            for sample, task in zip(samples, tasks, strict=True)
        ]

    def _score_split(self, task: ScoringTask) -> TaskResult:
        parts = self._score_packed(self._model, task.split())
        return TaskResult(scores=tuple(p.scores[0] for p in parts), cached_prompt_tokens=0)

    def _micro_batches(self, tasks: Sequence[ScoringTask]) -> list[list[int]]:
        """Group tasks of similar packed length so padding stays small."""
        budget = self.max_forward_tokens
        order = sorted(range(len(tasks)), key=lambda i: _packed_len(tasks[i]))
        groups: list[list[int]] = []
        for index in order:
            length = _packed_len(tasks[index])
            if groups and (len(groups[-1]) + 1) * length <= budget:
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def _score_packed(self, model: Any, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        rows = [_pack(task) for task in tasks]
        width = max(len(row.tokens) for row in rows)
        pad_id = 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, N)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # (B, N)
        segments = torch.full((len(rows), width), -1, dtype=torch.long)  # (B, N); -1 = padding
        for b, row in enumerate(rows):
            n = len(row.tokens)
            input_ids[b, :n] = torch.tensor(row.tokens)
            position_ids[b, :n] = torch.tensor(row.positions)
            segments[b, :n] = torch.tensor(row.segments)
        mask = _block_mask(segments).to(self.device)  # (B, 1, N, N)
        decoder = model.get_decoder()
        hidden = decoder(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=position_ids.to(self.device),
            use_cache=False,
        ).last_hidden_state  # (B, N, H)
        row_index = torch.tensor([b for b, row in enumerate(rows) for _ in row.answer_at])
        col_index = torch.tensor([c for row in rows for c in row.answer_at])
        logits = model.get_output_embeddings()(hidden[row_index, col_index])  # (R, V)
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (R, V)
        results, r = [], 0
        for task in tasks:
            k = len(task.sequences)
            block = logprobs[r : r + k]  # (k, V)
            per_label = [torch.logsumexp(block[:, list(ids)], dim=-1) for ids in task.labels_or(self.labels)]
            table = torch.stack(per_label, dim=-1).tolist()  # (k, L)
            scores = tuple(LabelLogprobs(tuple(row)) for row in table)
            results.append(TaskResult(scores=scores, cached_prompt_tokens=task.shared_tokens))
            r += k
        return results


class _PackedRow:
    __slots__ = ("tokens", "positions", "segments", "answer_at")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.segments: list[int] = []  # 0 = shared prefix, k+1 = suffix of question k
        self.answer_at: list[int] = []  # index of each question's last token


def _pack(task: ScoringTask) -> _PackedRow:
    row = _PackedRow()
    p = task.prefix_len
    row.tokens.extend(task.sequences[0][:p])
    row.positions.extend(range(p))
    row.segments.extend([0] * p)
    for k, sequence in enumerate(task.sequences):
        suffix = sequence[p:]
        row.tokens.extend(suffix)
        row.positions.extend(range(p, p + len(suffix)))
        row.segments.extend([k + 1] * len(suffix))
        row.answer_at.append(len(row.tokens) - 1)
    return row


def _packed_len(task: ScoringTask) -> int:
    return task.prefix_len + sum(len(s) - task.prefix_len for s in task.sequences)


def _block_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, N, N) mask, True where query i may attend key j.

    Causal, and a key is visible if it is in the shared prefix or in the query's own
    suffix. Padding attends only to itself so no row of the softmax is empty (an empty
    row gives NaN, which would then flow into the padding's keys and values).
    """
    n = segments.shape[1]
    causal = torch.ones((n, n), dtype=torch.bool).tril()  # (N, N)
    query = segments[:, :, None]  # (B, N, 1)
    key = segments[:, None, :]  # (B, 1, N)
    visible = ((key == 0) | (key == query)) & (key >= 0) & causal
    eye = torch.eye(n, dtype=torch.bool)[None]
    visible = visible | (eye & (query < 0))
    return visible[:, None]
