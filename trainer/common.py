"""What the trainers share: the policy settings every algorithm has (`PolicyConfig`), the
config check, the data rows, sampling groups and their token log-probabilities, checkpoints,
and pushing the policy to the service (live self). Each algorithm file (grpo.py, dpo.py)
keeps its own loop, loss and departures, readable top to bottom."""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

DATA_DIR = Path(__file__).parent / "data"
TASK_RULES = {"polite": "polite", "capitals": "reference", "arith": "reference", "lists": "numbered_list"}
"""The shipped tasks (trainer/data/NAME.jsonl) and the rule that checks each."""


class PolicyConfig(Protocol):
    """The fields of a trainer's config the shared helpers read (GRPO's and Meta-Rewarding's);
    a dataclass, so a checkpoint can keep a copy of it."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    group_size: int
    temperature: float
    max_new_tokens: int
    output_dir: str
    live_self_evaluator: str


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
    model: Any, tokenizer: Any, prompts: list[str], cfg: PolicyConfig, systems: list[str | None] | None = None
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


def micro_batches(batch_size: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, batch_size)) for start in range(0, batch_size, size)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def save_checkpoint(model: Any, tokenizer: Any, optimizer: Any, step: int, cfg: PolicyConfig) -> Path:
    path = Path(cfg.output_dir) / "checkpoints" / f"step_{step:06d}"
    model.save_pretrained(path)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(path)
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, path / "trainer_state.pt")
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}, indent=2))
    return path


def push_live_self(model: Any, tokenizer: Any, cfg: PolicyConfig, client: Any) -> Path:
    """Live self: from now on the service's evaluator judges with the current policy's weights.

    The service loads them beside the old ones and swaps between two batches, so reward
    requests in flight are not dropped (`client.reload_evaluator`, an admin route).
    """
    folder = (Path(cfg.output_dir) / "live_self").resolve()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    client.reload_evaluator(cfg.live_self_evaluator, str(folder))
    return folder
