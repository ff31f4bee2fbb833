"""Experiment for issue 24: is reusing each shared prefix's KV faster than the dense tree mask
on a long-response workload, on this CPU? (docs/benchmarks.md, "KV reuse on CPU")

    python bench/bench_kv_reuse.py          # ~4 min on 2 CPU cores

Workload: 2 prompts x 8 responses of ~1,100 tokens of step-by-step arithmetic x 3 questions
(48 evaluations), float32, the embedded SmolLM2-135M. Two ways to score the same tasks,
interleaved, best of 2 after a warm-up:
(a) the transformers backend as shipped: the prefix tree packed into rows of
    max_forward_tokens (2048 on CPU) with a dense tree mask;
(b) KV reuse: each prompt's shared prefix computed once (batch 1), its 8 responses as one
    batch attending to the prefix's cached keys and values, then each response's 3 questions
    as one batch attending to that response's cache; no L x L tree mask.
(c) as (b), one node a pass, with no mask tensor at all: a lower-right causal bias
    (torch.nn.attention.bias.causal_lower_right) lets SDPA use its fused kernel.
Also measured: one 2,048-token forward without any mask vs with a dense 4D mask, to split
the mask's cost from the linear layers'. Reported with the machine's float32 matmul peak.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface, DynamicCache

sys.path.insert(0, str(Path(__file__).parent))
from measure import matmul_peak  # noqa: E402
from workload import word_problem  # noqa: E402

from rlme.client.wire import Item, MetaQuestion  # noqa: E402
from rlme.service.backends.base import ScoringTask, build_task  # noqa: E402
from rlme.service.backends.transformers_backend import TransformersBackend  # noqa: E402
from rlme.service.prompting import common_prefix_len  # noqa: E402
from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig, Settings  # noqa: E402

QUESTIONS = [
    MetaQuestion(id="correct", text="Is the answer correct?"),
    MetaQuestion(id="logical", text="Does the whole solution logically lead from the question to an answer?"),
    MetaQuestion(id="polite", text="Is the response polite?"),
]


def long_tasks(backend: TransformersBackend) -> list[ScoringTask]:
    rng, items = random.Random(0), []
    for p in range(2):
        prompt = word_problem(rng, steps=3)["prompt"]
        for g in range(8):
            response = word_problem(random.Random(f"{p}-{g}"), steps=45)["response"]
            items.append(Item(prompt=prompt, response=response))
    return [build_task(backend.tokenizer, DEFAULT_SYSTEM_PROMPT, item, QUESTIONS) for item in items]


KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, kv heads, T, head dim)


class KVReuse:
    """Three levels of a GRPO request's prefix tree, each batched on its parent's cache."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.model: Any = backend._model
        self.labels = backend.labels
        self.layers = self.model.config.num_hidden_layers

    def forward(self, past: KV | None, past_len: int, chunks: list[list[int]]) -> tuple[torch.Tensor, KV]:
        """`chunks` (right-padded) extending one shared past; hidden states and the cache."""
        batch, width = len(chunks), max(map(len, chunks))
        ids = torch.zeros((batch, width), dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        mask = torch.zeros((batch, 1, width, past_len + width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        for b, chunk in enumerate(chunks):
            n = len(chunk)
            ids[b, :n] = torch.tensor(chunk)
            positions[b, :n] = torch.arange(past_len, past_len + n)
            mask[b, 0, :, :past_len] = True
            mask[b, 0, :n, past_len : past_len + n] = causal[:n, :n]
            mask[b, 0, torch.arange(n, width), past_len + torch.arange(n, width)] = True  # padding: itself
        cache = DynamicCache(config=self.model.config)
        for layer, (k, v) in enumerate(past or []):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer)
        hidden = self.model.get_decoder()(
            input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache, use_cache=True
        ).last_hidden_state
        return hidden, [(cache.layers[i].keys, cache.layers[i].values) for i in range(self.layers)]

    @staticmethod
    def groups(tasks: list[ScoringTask]) -> list[list[int]]:
        """Task indices by their shared start (the system text and the prompt)."""
        found: dict[tuple[int, ...], list[int]] = {}
        for i, task in enumerate(tasks):
            found.setdefault(task.sequences[0][:48], []).append(i)
        return list(found.values())

    def read_labels(self, last: torch.Tensor) -> list[tuple[float, float]]:
        """(log P(yes), log P(no)) from each question's last hidden state, (k, H)."""
        logp = torch.log_softmax(self.model.get_output_embeddings()(last).float(), -1)
        yes, no = list(self.labels.yes_ids), list(self.labels.no_ids)
        return [(torch.logsumexp(row[yes], -1).item(), torch.logsumexp(row[no], -1).item()) for row in logp]

    @torch.inference_mode()
    def score(self, tasks: list[ScoringTask]) -> list[list[tuple[float, float]]]:
        out: dict[int, list[tuple[float, float]]] = {}
        for members in self.groups(tasks):
            firsts = [tasks[i].sequences[0] for i in members]
            shared = common_prefix_len(firsts)
            _, prefix = self.forward(None, 0, [list(firsts[0][:shared])])
            responses = [list(tasks[i].sequences[0][shared : tasks[i].prefix_len]) for i in members]
            _, after = self.forward(prefix, shared, responses)
            for b, i in enumerate(members):
                n = shared + len(responses[b])
                past = [(k[b : b + 1, :, :n], v[b : b + 1, :, :n]) for k, v in after]
                questions = [list(s[tasks[i].prefix_len :]) for s in tasks[i].sequences]
                hidden, _ = self.forward(past, n, questions)
                out[i] = self.read_labels(
                    torch.stack([hidden[k, len(q) - 1] for k, q in enumerate(questions)])
                )
        return [out[i] for i in range(len(tasks))]


def lower_right_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """Queries are the last tokens of the keys: each sees every earlier key and itself."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    bias = causal_lower_right(query.shape[-2], key.shape[-2])
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


class KVReuseFused(KVReuse):
    """(c): one tree node a forward pass, attention by the lower-right causal bias."""

    def node(self, past: KV | None, start: int, tokens: list[int]) -> tuple[torch.Tensor, KV]:
        cache = DynamicCache(config=self.model.config)
        for layer, (k, v) in enumerate(past or []):
            cache.update(k, v, layer)
        ids, positions = torch.tensor([tokens]), torch.arange(start, start + len(tokens))[None]
        hidden = self.model.get_decoder()(
            input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True
        ).last_hidden_state
        return hidden, [(cache.layers[i].keys, cache.layers[i].values) for i in range(self.layers)]

    @torch.inference_mode()
    def score(self, tasks: list[ScoringTask]) -> list[list[tuple[float, float]]]:
        out: dict[int, list[tuple[float, float]]] = {}
        for members in self.groups(tasks):
            firsts = [tasks[i].sequences[0] for i in members]
            shared = common_prefix_len(firsts)
            _, prefix = self.node(None, 0, list(firsts[0][:shared]))
            for i in members:
                task = tasks[i]
                _, response = self.node(prefix, shared, list(task.sequences[0][shared : task.prefix_len]))
                last = torch.stack([self.node(response, task.prefix_len, list(s[task.prefix_len :]))[0][0, -1]
                                    for s in task.sequences])  # fmt: skip
                out[i] = self.read_labels(last)
        return [out[i] for i in range(len(tasks))]


def max_difference(reference: list[Any], got: list[list[tuple[float, float]]]) -> float:
    """Largest |log-prob difference| from the shipped backend's results."""
    pairs = [zip(s.logps, gs, strict=True) for r, g in zip(reference, got, strict=True)
             for s, gs in zip(r.scores, g, strict=True)]  # fmt: skip
    return max(abs(a - b) for pair in pairs for a, b in pair)


def best(run: Any, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    peak = matmul_peak()
    backend = TransformersBackend(EvaluatorConfig(name="default", dtype="float32"), Settings.load().cache_dir)
    backend.setup()
    tasks = long_tasks(backend)
    kv = KVReuse(backend)
    reference, reused = backend.score(tasks), kv.score(tasks)  # warm-up, and the equality check
    error = max_difference(reference, reused)
    AttentionInterface.register("lower_right", lower_right_attention)
    fused = KVReuseFused(backend)
    config = backend._model.config

    def run_fused() -> list[list[tuple[float, float]]]:
        config._attn_implementation = "lower_right"
        try:
            return fused.score(tasks)
        finally:
            config._attn_implementation = "sdpa"

    fused_error = max_difference(reference, run_fused())
    tree_s, kv_s, fused_s = [], [], []
    for _ in range(2):  # interleaved
        tree_s.append(best(lambda: backend.score(tasks), 1))
        kv_s.append(best(lambda: kv.score(tasks), 1))
        fused_s.append(best(run_fused, 1))
    computed = sum(t.prompt_tokens for t in tasks) - sum(r.cached_prompt_tokens for r in reference)
    print(f"float32 matmul peak {peak / 1e9:.0f} GFLOP/s; {len(tasks) * 3} evaluations; {computed} tokens")
    print(f"dense tree rows: {48 / min(tree_s):.2f} eval/s   KV reuse: {48 / min(kv_s):.2f} eval/s   "
          f"(x{min(tree_s) / min(kv_s):.2f}); max |log-prob difference| {error:.1e}")  # fmt: skip
    print(f"KV reuse, fused attention: {48 / min(fused_s):.2f} eval/s (x{min(tree_s) / min(fused_s):.2f}); "
          f"max |log-prob difference| {fused_error:.1e}")  # fmt: skip
    decoder = backend._model.get_decoder()
    ids = torch.randint(100, 10_000, (1, 2048))
    mask = torch.ones(2048, 2048, dtype=torch.bool).tril()[None, None]
    with torch.inference_mode():
        decoder(input_ids=ids, use_cache=False)
        plain = best(lambda: decoder(input_ids=ids, use_cache=False))
        masked = best(lambda: decoder(input_ids=ids, attention_mask=mask, use_cache=False))
    body = sum(p.numel() for n, p in backend._model.named_parameters() if "embed" not in n)
    print(f"one 2,048-token forward: no mask {plain:.2f} s ({2 * body * 2048 / plain / peak:.0%} of peak on "
          f"the linear layers alone), dense 4D mask {masked:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
