"""What the trainers share: the policy settings every algorithm has (`PolicyFields`, declared
once), the config check, the data rows, loading the policy, its tokenizer and optimiser (and
resuming them), sampling groups and their token log-probabilities, checkpoints, and pushing
the policy to the service (live self). Each algorithm file (grpo.py, dpo.py) keeps its own
loop, loss and departures, readable top to bottom."""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

DATA_DIR = Path(__file__).parent / "data"
TASK_RULES = {"polite": "polite", "capitals": "reference", "arith": "reference", "lists": "numbered_list"}
"""The shipped tasks (trainer/data/NAME.jsonl) and the rule that checks each."""


@dataclass
class PolicyFields:
    """The settings of the policy and its run that every trainer has (GRPO, R-Align through
    GRPO, Meta-Rewarding). A trainer's config extends it; where an algorithm wants another
    default it restates the field with that default only."""

    model: str = "embedded"
    """Initial policy: 'embedded' (SmolLM2-135M-Instruct, as the service uses it), a HF folder or .gguf."""
    data: str = "polite"
    """JSONL of {"prompt": str, "reference": str (optional)}, or a shipped task: 'polite', 'capitals',
    'arith', 'lists'."""
    group_size: int = 8
    """G (K in Meta-Rewarding): responses sampled per prompt."""
    max_new_tokens: int = 64
    """Longest response in tokens; longer ones are cut off and trained on as they are."""
    temperature: float = 1.0
    """Sampling temperature τ (no top-k/top-p); GRPO's loss uses log-probs of the same tempered
    distribution."""
    lr: float = 1e-5
    """AdamW learning rate (constant)."""
    micro_batch_size: int = 8
    """Rows (GRPO: responses; DPO: pairs) per forward/backward; gradients accumulate: memory only."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm of each optimiser step to this; 0 disables."""
    live_self_evaluator: str = "default"
    """The service evaluator that follows the policy in live-self mode (needs an admin key in
    $RLME_API_KEY, or anonymous use on localhost, and a folder the service can read)."""
    base_url: str | None = None
    """The rlme service; null: $RLME_BASE_URL, else http://127.0.0.1:8000."""
    service_wait_s: float = 300.0
    """How long to wait at start for the service's /health to report ready."""
    output_dir: str = "runs/grpo"
    """metrics.jsonl, tb/ (TensorBoard), the figures and checkpoints/ go here."""
    resume: str | None = None
    """A checkpoint folder (output_dir/checkpoints/step_N) to continue from: weights, optimiser, step."""
    seed: int = 0
    """Seeds prompt order and sampling (reseeded every step, so a resumed run continues alike)."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'. The policy is trained in float32."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: responses are compared within a group")
        if self.micro_batch_size < 1:
            raise ValueError("micro_batch_size must be >= 1")
        if self.resume is not None and not (Path(self.resume) / "trainer_state.pt").is_file():
            raise ValueError(
                f"resume: {self.resume} is not a checkpoint of this trainer (no trainer_state.pt there); "
                "checkpoints are written to output_dir/checkpoints/step_NNNNNN"
            )


def config_from(cls: Any, values: dict[str, Any], source: str) -> Any:
    """`cls(**values)` for a trainer's config dataclass, after checking names and scalar types."""
    types = {f.name: f.type for f in fields(cls)}
    unknown = set(values) - set(types)
    if unknown:
        raise ValueError(f"{source}: unknown fields {sorted(unknown)}; see {cls.__name__} ({cls.__module__})")
    for name, value in values.items():
        kind = str(types[name])
        if kind == "float" and isinstance(value, str):
            with contextlib.suppress(ValueError):  # YAML 1.1 reads `1e-5` as a string
                value = values[name] = float(value)
        allowed = {"float": (int, float), "int": (int,), "bool": (bool,)}.get(kind)
        if allowed and (not isinstance(value, allowed) or isinstance(value, bool) != (kind == "bool")):
            raise ValueError(f"{source}: {name} must be {kind}, not {value!r}")
    return cls(**values)


def load_rows(data: str) -> list[dict[str, Any]]:
    path = DATA_DIR / f"{data}.jsonl" if data in TASK_RULES else Path(data)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or any(not isinstance(r.get("prompt"), str) for r in rows):
        raise ValueError(f"{path}: need JSON lines with a string 'prompt' (and optional 'reference')")
    return rows


def step_rows(num_rows: int, per_step: int, step: int, seed: int) -> list[int]:
    """Row indices for `step` (1-based): shuffled epochs, a pure function of (seed, step), so
    resuming needs no sampler state."""
    indices = []
    for k in range((step - 1) * per_step, step * per_step):
        epoch, position = divmod(k, num_rows)
        order = list(range(num_rows))
        random.Random(f"{seed}-epoch-{epoch}").shuffle(order)
        indices.append(order[position])
    return indices


@dataclass
class Rollout:
    sequences: torch.Tensor  # (B, L + T) left-padded prompt, then response (padded after EOS)
    attention_mask: torch.Tensor  # (B, L + T)
    response_mask: torch.Tensor  # (B, T): response tokens up to and including the first EOS
    prompt_len: int  # L
    texts: list[str]  # B decoded responses; groups are contiguous: rows p·G ... p·G + G − 1


@torch.no_grad()
def sample_groups(
    model: Any, tokenizer: Any, prompts: list[str], cfg: PolicyFields, systems: list[str | None] | None = None
) -> Rollout:
    """G samples per prompt; a row's `system` text (R-Align's judge prompt) goes first."""
    chats = [
        tokenizer.apply_chat_template(
            ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p, system in zip(prompts, systems or [None] * len(prompts), strict=True)
    ]
    enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    sequences = model.generate(
        **enc,
        do_sample=True,
        temperature=cfg.temperature,
        top_k=0,  # no top-k/top-p: the loss's π_old must be the distribution we sampled from
        top_p=1.0,
        max_new_tokens=cfg.max_new_tokens,
        num_return_sequences=cfg.group_size,  # repeats each prompt G times, contiguously
        pad_token_id=tokenizer.pad_token_id,
    )  # (B, L + T)
    prompt_len = enc["input_ids"].shape[1]
    response = sequences[:, prompt_len:]  # (B, T)
    eos = model.generation_config.eos_token_id
    is_eos = torch.isin(
        response, torch.tensor(eos if isinstance(eos, list) else [eos], device=response.device)
    )
    response_mask = (is_eos.cumsum(1) - is_eos.long()) == 0  # (B, T): nothing after the first EOS
    prompt_mask = enc["attention_mask"].repeat_interleave(cfg.group_size, dim=0)  # (B, L)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)  # (B, L + T)
    texts = [
        tokenizer.decode(row[keep], skip_special_tokens=True)
        for row, keep in zip(response, response_mask, strict=True)
    ]
    return Rollout(sequences, attention_mask, response_mask, prompt_len, texts)


def token_logprobs(model: Any, rollout: Rollout, rows: slice, temperature: float) -> torch.Tensor:
    """log π(y_t | x, y_<t) of the tempered distribution for rows of the rollout: (b, T)."""
    ids, attention = rollout.sequences[rows], rollout.attention_mask[rows]  # (b, L + T)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
    num_response = ids.shape[1] - rollout.prompt_len
    # Position t's logits predict token t+1: the last T+1 positions minus the final one.
    logits = model(
        input_ids=ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=num_response + 1
    )
    logits = logits.logits[:, :-1].float() / temperature  # (b, T, V)
    targets = ids[:, rollout.prompt_len :]  # (b, T)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (b, T)


@dataclass
class Policy:
    """The policy being trained, its tokenizer and optimiser, and where the run starts."""

    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    initial: str  # the initial weights' folder (π_ref, the reference of a resumed run)
    device: torch.device
    start: int  # the first step (iteration) to run: 1, or the resumed checkpoint's + 1

    def load_initial(self) -> Any:
        """A fresh copy of the initial policy, in eval mode."""
        return load_model(self.initial, self.device)


def load_model(path: str | Path, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    load: Any = AutoModelForCausalLM.from_pretrained  # Any: transformers' `.to` stubs confuse mypy
    # Llama/SmolLM2 have no dropout: eval mode makes rollout and update see the same function.
    return load(path, dtype=torch.float32).to(device).eval()


def load_policy(cfg: PolicyFields, weight_decay: float = 0.0) -> Policy:
    """The policy from `cfg.resume` or `cfg.model` in float32, the tokenizer (left padding:
    generation appends to every row's right end) and a fused AdamW, resumed where asked."""
    from transformers import AutoTokenizer

    from rlme.service.model_store import resolve_model
    from rlme.service.settings import Settings

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if cfg.device == "auto" else cfg.device)
    initial = resolve_model(cfg.model, Settings.load().cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(cfg.resume or initial)
    tokenizer.padding_side = "left"
    model = load_model(cfg.resume or initial, device)
    # fused: one kernel for all parameters, ~10x faster than the default on CPU (measured).
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=weight_decay, fused=True)
    start = 1
    if cfg.resume:
        state = torch.load(Path(cfg.resume) / "trainer_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"] + 1
    return Policy(model, tokenizer, optimizer, str(initial), device, start)


def sequence_logps(
    model: Any, tokenizer: Any, prompts: list[str], responses: list[str], ended: list[bool]
) -> torch.Tensor:
    """s(y) = Σ_t log π(y_t | x, y_<t) per pair; a response that ended (not cut off at the
    token limit) is closed by EOS, as it was sampled. (B,)."""
    ids, starts = [], []
    for prompt, response, closed in zip(prompts, responses, ended, strict=True):
        chat = [{"role": "user", "content": prompt}]
        head = list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False))
        tail = tokenizer(response, add_special_tokens=False, split_special_tokens=True).input_ids
        ids.append([*head, *tail, *([tokenizer.eos_token_id] if closed else [])])
        starts.append(len(head))
    width = max(len(s) for s in ids)
    batch = torch.full(
        (len(ids), width), tokenizer.pad_token_id or 0, dtype=torch.long
    )  # (B, L) right-padded
    keep = torch.zeros((len(ids), width), dtype=torch.bool)  # (B, L): response tokens
    for b, (row, start) in enumerate(zip(ids, starts, strict=True)):
        batch[b, : len(row)] = torch.tensor(row)
        keep[b, start : len(row)] = True
    batch, keep = batch.to(model.device), keep.to(model.device)
    # Right padding: real tokens never attend to it, so no attention mask is needed.
    logits = model(input_ids=batch).logits[:, :-1].float()  # (B, L-1, V)
    targets = batch[:, 1:]  # (B, L-1)
    token = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (B, L-1)
    return (token * keep[:, 1:]).sum(-1)  # (B,)


@torch.no_grad()
def greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(
        **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
    )
    return [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, enc["input_ids"].shape[1] :]]


def micro_batches(batch_size: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, batch_size)) for start in range(0, batch_size, size)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def save_checkpoint(model: Any, tokenizer: Any, optimizer: Any, step: int, cfg: PolicyFields) -> Path:
    path = Path(cfg.output_dir) / "checkpoints" / f"step_{step:06d}"
    model.save_pretrained(path)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(path)
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, path / "trainer_state.pt")
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}, indent=2))
    return path


def push_live_self(model: Any, tokenizer: Any, cfg: PolicyFields, client: Any) -> Path:
    """Live self: from now on the service's evaluator judges with the current policy's weights.

    The service loads them beside the old ones and swaps between two batches, so reward
    requests in flight are not dropped (`client.reload_evaluator`, an admin route).
    """
    folder = (Path(cfg.output_dir) / "live_self").resolve()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    client.reload_evaluator(cfg.live_self_evaluator, str(folder))
    return folder
