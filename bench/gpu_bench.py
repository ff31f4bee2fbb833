"""The transformers backend on a GPU (bf16) at 1.5B and 7B shapes, against HF padded batches.

    python bench/gpu_bench.py prepare        # here: the embedded tokenizer -> bench/gpu_tokenizer/
    python bench/gpu_bench.py run            # on the GPU machine (carry bench/gpu_tokenizer): ~6 min
    python bench/gpu_bench.py run --device cpu --shapes tiny --repeats 1   # a smoke run anywhere

No model hub on the GPU machine and only a small upload travels, so each model is built
there from a config (Qwen2.5-1.5B's and Qwen2.5-7B's shapes as Llama configs, random bf16
weights, the embedded tokenizer's vocabulary): speed does not depend on the weights.
Workloads as bench_grpo_peers.py: short (4 prompts x 8 responses of ~60 tokens x 3
questions) and long (2 prompts x 8 responses of ~800 tokens x 3 questions). Systems, in
every repeat, best of N after a warm-up:
(a) HF padded: left-padded batches of full evaluations, SDPA, lm_head at the last column;
(b) rlme transformers backend, dense tree mask (`tree_attention: dense`);
(c) rlme transformers backend, tree attention (`tree_attention: flex`: flex or trunk plans).
Reported: eval/s, ratio to (a), tokens computed, the fraction of the measured bf16 matmul
peak (2 x non-embedding parameters x tokens computed / time / peak), and the peak itself;
results to bench/results/gpu_bench.json. Needs torch with CUDA, transformers, pydantic and
pydantic-settings on that machine; rlme itself is imported from this checkout.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from measure import left_padded, matmul_peak, sync  # bench/ is the script's folder

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE / "gpu_tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

# Llama-style configs with the shapes of Qwen2.5 1.5B and 7B (hidden, MLP, layers, heads, kv heads)
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4},
}  # fmt: skip


def import_rlme() -> None:
    """`rlme` from this checkout when it is not installed (a bare GPU machine)."""
    try:
        import rlme  # noqa: F401
    except ImportError:
        root = Path(tempfile.mkdtemp(prefix="rlme-src-")) / "rlme"
        root.mkdir()
        (root / "__init__.py").write_text("")
        for part in ("service", "client", "trainer"):
            (root / part).symlink_to(HERE.parent / part)
        sys.path.insert(0, str(root.parent))
    sys.path.insert(0, str(HERE))


def prepare() -> None:
    from rlme.service.model_store import EMBEDDED, resolve_model
    from rlme.service.settings import Settings

    source = resolve_model(EMBEDDED, Settings.load().cache_dir)
    TOKENIZER.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, TOKENIZER / name)
    print(f"tokenizer files in {TOKENIZER}: {sorted(p.name for p in TOKENIZER.iterdir())}")


def build_model(shape: str, vocab: int, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab, max_position_embeddings=8192, rope_theta=1e6, tie_word_embeddings=False,
        attn_implementation="sdpa", **SHAPES[shape],
    )  # fmt: skip
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def padded(model: Any, sequences: list[list[int]], budget: int, device: torch.device) -> None:
    """(a): left-padded batches (shortest first) of at most `budget` padded tokens."""
    chunks: list[list[list[int]]] = []
    for sequence in sorted(sequences, key=len):
        if chunks and (len(chunks[-1]) + 1) * len(sequence) <= budget:
            chunks[-1].append(sequence)
        else:
            chunks.append([sequence])
    with torch.inference_mode():
        for chunk in chunks:
            ids, mask = left_padded(chunk)
            model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)


def measure(model: Any, tokenizer: Any, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    """Every workload on one model: the three systems, best of args.repeats."""
    from workload import GRPO_QUESTIONS, WORKLOADS

    from rlme.client.wire import Item, MetaQuestion
    from rlme.service.backends.base import build_task
    from rlme.service.backends.transformers_backend import TransformersBackend
    from rlme.service.settings import DEFAULT_SYSTEM_PROMPT, EvaluatorConfig

    device = torch.device(args.device)
    # the lm_head runs at one position an evaluation: not counted
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    questions = [MetaQuestion(**q) for q in GRPO_QUESTIONS]
    backends = {}
    for mode in ("dense", "flex"):
        config = EvaluatorConfig(device=args.device, tree_attention=mode, max_forward_tokens=args.row_tokens)
        backends[mode] = TransformersBackend(config, Path(tempfile.mkdtemp()))
        backends[mode].adopt(model, tokenizer)
    report: dict[str, Any] = {}
    for workload in args.workloads:
        items = WORKLOADS[workload]()
        tasks = [build_task(tokenizer, DEFAULT_SYSTEM_PROMPT, Item(**i), questions) for i in items]
        sequences = [list(s) for t in tasks for s in t.sequences]
        total = sum(map(len, sequences))
        computed = {"(a) HF padded": total}
        systems = {
            "(a) HF padded": lambda s=sequences: padded(model, s, args.row_tokens, device),
            "(b) rlme, dense tree mask": lambda t=tasks: backends["dense"].score(t),
            "(c) rlme, tree attention": lambda t=tasks: backends["flex"].score(t),
        }
        best = dict.fromkeys(systems, float("inf"))
        for attempt in range(args.repeats + 1):  # the first warms up (and compiles)
            for name, system in systems.items():
                sync(device)
                started = time.perf_counter()
                out = system()
                sync(device)
                if attempt:
                    best[name] = min(best[name], time.perf_counter() - started)
                if out is not None:
                    computed[name] = total - sum(r.cached_prompt_tokens for r in out)
        rows = {
            name: {
                "eval_per_s": len(sequences) / seconds,
                "ratio_to_padded": best["(a) HF padded"] / seconds,
                "tokens_computed": computed[name],
                "matmul_peak_fraction": 2 * body * computed[name] / seconds / peak,
            }
            for name, seconds in best.items()
        }
        report[workload] = rows
        print(f"\n{workload}: {len(sequences)} evaluations, {total} tokens")
        print("| system | eval/s | vs padded | tokens computed | matmul peak |\n|---|---|---|---|---|")
        for name, row in rows.items():
            print(
                f"| {name} | {row['eval_per_s']:.1f} | {row['ratio_to_padded']:.2f}x | "
                f"{row['tokens_computed']} | {row['matmul_peak_fraction']:.0%} |"
            )
    return report


def run(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    peak = matmul_peak(device, dtype, size=8192 if device.type == "cuda" else 1024, repeats=10)
    report: dict[str, Any] = {"device": str(device), "dtype": str(dtype), "matmul_peak_tflops": peak / 1e12}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    print(f"{report.get('gpu', device)} {dtype} matmul peak {peak / 1e12:.2f} TFLOP/s")
    for shape in args.shapes:
        print(f"\n## {shape}")
        model = build_model(shape, len(tokenizer), device, dtype)
        report.setdefault("runs", {})[shape] = measure(model, tokenizer, args, peak)
        model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["prepare", "run"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", nargs="+", default=["1.5b", "7b"], choices=list(SHAPES))
    parser.add_argument("--workloads", nargs="+", default=["short", "long"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--row-tokens", type=int, default=32768, help="max_forward_tokens (rows, padded batches)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_bench.json")
    args = parser.parse_args()
    import_rlme()
    prepare() if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
