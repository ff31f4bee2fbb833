"""Hugging Face transformers backend (CPU, or CUDA when present), in process.

Prefix sharing without copying caches: all evaluations of a batch (every question of
every item, across the requests in it) are packed as a prefix tree into a few rows
(prefix_tree.py): system text, a GRPO group's prompt, a response, each computed once, with
a tree attention mask and position ids that follow the tree's depth. The result equals
scoring each evaluation alone up to float rounding. The lm_head runs only at the last
token of each evaluation.
"""

from __future__ import annotations

import logging
import threading
import time
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
    late_at,
)
from rlme.service.backends.prefix_tree import PackedRow, pack, tree_mask
from rlme.service.backends.tree_attention import PLANS, TreeAttention, padded_width
from rlme.service.errors import ServiceStopping
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
        self._abort = threading.Event()
        self._tree: TreeAttention | None = None
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
            self._status = f"failed to load {self.config.model!r}: {exc}"
            raise
        self.adopt(model, tokenizer, labels)
        log.info("evaluator %r loaded from %s on %s (%s)", self.config.name, path, self.device, self.dtype)

    def adopt(self, model: Any, tokenizer: Any, labels: Any = None) -> None:
        """Serve `model` (loaded by setup, or built elsewhere: bench/gpu_bench.py)."""
        if labels is None:
            labels = label_tokens(tokenizer, self.config.yes_words, self.config.no_words)
        model = model.to(self.device).eval()
        mode = self.config.tree_attention
        if mode == "flex" or (mode == "auto" and self.device.type == "cpu"):
            self._tree = TreeAttention.create(model, padded_width(self.max_forward_tokens), flex=True)
        self._tokenizer, self._labels, self._model = tokenizer, labels, model
        self._max_model_len = self.config.max_model_len or int(
            getattr(model.config, "max_position_embeddings", 2048)
        )
        self._status = "ok"

    def health(self) -> str:
        return self._status

    def abort(self) -> None:
        """Stop every generation at its next decode step (shutdown); nothing new starts."""
        self._abort.set()

    @torch.inference_mode()
    def score(self, tasks: Sequence[ScoringTask]) -> list[TaskResult]:
        """Every question of every task in one prefix forest (prefix_tree.py), a few rows a
        forward pass; from scratch, one row per question, when prefix_sharing is off."""
        model = self._require(self._model)
        owners = [(t, k) for t, task in enumerate(tasks) for k in range(len(task.sequences))]
        sequences = [tasks[t].sequences[k] for t, k in owners]
        rows = pack(sequences, self.max_forward_tokens, share=self.config.prefix_sharing)
        logps: list[tuple[float, ...]] = [()] * len(sequences)
        shared = [0] * len(sequences)
        for group in self._forward_groups(rows):
            labels = [tasks[owners[m][0]].labels_or(self.labels) for r in group for m in r.members]
            for (member, saved), read in zip(
                ((m, s) for r in group for m, s in zip(r.members, r.shared, strict=True)),
                self._forward(model, group, labels),
                strict=True,
            ):
                logps[member], shared[member] = read, saved
        results, at = [], 0
        for task in tasks:
            k = len(task.sequences)
            scores = tuple(LabelLogprobs(logps[at + i]) for i in range(k))
            results.append(TaskResult(scores=scores, cached_prompt_tokens=sum(shared[at : at + k])))
            at += k
        return results

    def _forward_groups(self, rows: list[PackedRow]) -> list[list[PackedRow]]:
        """Rows of similar length a pass, within max_forward_tokens padded tokens."""
        groups: list[list[PackedRow]] = []
        for row in sorted(rows, key=lambda r: len(r.tokens)):
            if groups and (len(groups[-1]) + 1) * len(row.tokens) <= self.max_forward_tokens:
                groups[-1].append(row)
            else:
                groups.append([row])
        return groups

    def _forward(
        self, model: Any, rows: list[PackedRow], labels: list[tuple[tuple[int, ...], ...]]
    ) -> list[tuple[float, ...]]:
        """Log-prob of each label group at each member's last token, in member order."""
        width = max(len(row.tokens) for row in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)  # (B, W); 0 = padding
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # (B, W)
        for b, row in enumerate(rows):
            input_ids[b, : len(row.tokens)] = torch.tensor(row.tokens)
            position_ids[b, : len(row.tokens)] = torch.tensor(row.positions)
        if self._tree is not None:
            # unused by tree attention; a 4D mask tells transformers not to build one
            mask = torch.ones((), dtype=torch.bool, device=self.device).expand(len(rows), 1, width, width)
            plans = {PLANS: self._tree.plans(rows, width, self.device)}
        else:
            mask, plans = tree_mask(rows, width).to(self.device), {}
        hidden = model.get_decoder()(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=position_ids.to(self.device),
            use_cache=False,
            **plans,
        ).last_hidden_state  # (B, W, H)
        row_index = torch.tensor([b for b, row in enumerate(rows) for _ in row.answers])
        col_index = torch.tensor([c for row in rows for c in row.answers])
        logits = model.get_output_embeddings()(
            hidden[row_index, col_index]
        )  # (R, V): lm_head at answers only
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (R, V)
        return [
            tuple(torch.logsumexp(logprobs[r, list(ids)], dim=-1).item() for ids in groups)
            for r, groups in enumerate(labels)
        ]

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
        rows = tasks[0].samples if sampled else 1  # output rows per task
        deadlines = [late_at(t) for t in tasks for _ in range(rows)]
        output = model.generate(
            prompt.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            tokenizer=self.tokenizer,
            stopping_criteria=[_Interrupt(deadlines, self._abort)],
        )  # (B * n, P + T)
        if self._abort.is_set():
            raise ServiceStopping()
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


class _Interrupt:
    """A stopping criterion (transformers' protocol): a row is done once its task's deadline
    has passed (nobody waits for it), and every row once the backend is aborted. Checked
    after each decode step, so a judge never writes past a deadline by more than one token."""

    def __init__(self, deadlines: list[float], abort: threading.Event) -> None:
        self.deadlines = torch.tensor(deadlines, dtype=torch.float64)  # (B * n,)
        self.abort = abort

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.abort.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        late = self.deadlines < time.monotonic()  # (B * n,)
        return late.to(input_ids.device)
