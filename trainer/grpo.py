"""GRPO with the CISPO loss; rewards from the rlme service (RLME), a rule (RLVR), or both.

Read top to bottom: config, the pure maths (advantages, loss), update, `train()`, `main()`;
the reward call is trainer/rewards.py, what every trainer shares trainer/common.py.
Run: `python -m rlme.trainer.grpo --config FILE`.

Objective. Each step takes P prompts x_p and samples G responses y_{p,i} ~ π_old(·|x_p)
at temperature τ (π_old = the policy at the start of the step). Rewards:

    r = w_rlme · Σ_j v_j Σ_k w_k log p_yes_jk(x, y)        (service: evaluators j, meta-questions k)
      + w_rlvr · [y passes the rule: e.g. matches the reference answer (trainer/rules.py)]

with (w_rlme, w_rlvr) = (1, 0) for reward "rlme", (0, 1) for "rlvr", the config's weights
for "mixture". Reward "r_align" trains the policy as a pairwise judge with a label-gated
reward instead (trainer/r_align.py). Advantages within each group:

    A_{p,i} = r_{p,i} − mean_i(r_{p,·})          optionally / (std_i(r_{p,·}) + 1e-6)

Then `mu` passes over the same batch, each one AdamW step on

    L(θ) = −(1/N) Σ_{p,i,t} sg(clip(ρ_t, 1 − ε_low, 1 + ε_high)) · A_{p,i} · log π_θ(y_t | x, y_<t)
           + β · (1/N) Σ_{p,i,t} k3_t
    ρ_t  = π_θ(y_t | ·) / π_old(y_t | ·),     k3_t = π_ref/π_θ − log(π_ref/π_θ) − 1

where N is the number of response tokens in the batch, sg is stop-gradient, and π_ref
is the frozen initial policy (loaded only when β = kl_coef > 0).

Departures from the papers (GRPO: Shao et al. 2024, arXiv 2402.03300; CISPO: MiniMax-M1,
arXiv 2506.13585; RLME: Rentschler & Roberts 2026):
- GRPO's clipped PPO ratio is replaced by CISPO: the importance weight is clipped and
  detached, so every token keeps its gradient (clipped tokens are not dropped).
- One token-level mean over the whole batch (CISPO, DAPO), not GRPO's mean per sequence
  then over sequences. The std in the advantage is the population std (divide by G).
- ε defaults: MiniMax-M1 imposes no lower bound on the weight and does not publish its
  ε_high; ours are ε_low = 1 (weights ≥ 0: no lower bound) and ε_high = 0.28 (our choice).
- The KL term (GRPO's k3 estimator) is off by default (β = 0), as in DAPO and MiniMax-M1.
- Log-probs are of the tempered distribution (logits / τ) the samples were drawn from, and
  sampling uses no top-k/top-p, so π_old is exactly the sampling distribution.
- Ground-truth anchoring (RLME) is per prompt group: an anchored group shows its reference
  to the evaluator for all G responses, so responses compared with each other were judged
  under the same conditions. The expected fraction of anchored samples is `anchor_fraction`.
- Responses cut off at `max_new_tokens` are scored and trained on as they are.
- Each of the `mu` passes is one optimiser step over the whole batch (micro-batches only
  accumulate gradients), not several mini-batch steps.
- p_yes is normalised over the two answers, P(yes) / (P(yes) + P(no)), each summed over
  the tokenizer's variants of the word (RLME reads P(yes) alone), and the service floors
  log p_yes at `reward.logp_floor` (−20) so one near-certain "No" cannot dominate a batch.
- A response whose score has low label mass (the evaluator answered neither yes nor no)
  gets no reward and advantage 0 (`mask_low_label_mass`), as in 'r_align'.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlme.trainer.common import (
    PolicyFields,
    Rollout,
    config_from,
    load_policy,
    load_rows,
    mean,
    micro_batches,
    push_live_self,
    sample_groups,
    save_checkpoint,
    step_rows,
    token_logprobs,
)
from rlme.trainer.outputs import open_run, plot_rewards, write_jsonl
from rlme.trainer.r_align import rewards as r_align_rewards
from rlme.trainer.r_align import sft_warmup, training_rows
from rlme.trainer.rewards import (
    compute_rewards,
    meta_questions,
    monitor_alarm,
    new_run_id,
    resolve_rule,
    reward_weights,
)
from rlme.trainer.rules import RULES

STD_EPS = 1e-6


@dataclass
class TrainConfig(PolicyFields):
    """GRPO's settings: the shared policy fields (trainer/common.py PolicyFields: model, data,
    group_size, max_new_tokens, temperature, lr, micro_batch_size, max_grad_norm, live-self
    evaluator, service, output_dir, resume, seed, device) and these."""

    algorithm: Literal["grpo"] = "grpo"
    """Chooses this trainer in `rlme train`; 'meta_rewarding' is trainer/dpo.py."""
    prompts_per_step: int = 4
    """P: prompts per step; a step's batch holds P·G responses."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    steps: int = 20
    """Training steps; each is one rollout, one reward call and `mu` optimiser steps."""
    mu: int = 2
    """Optimisation passes per batch. With mu >= 2 the policy leaves π_old, so ρ and its clip matter."""
    eps_low: float = 1.0
    """CISPO: importance weights are clipped below at 1 - eps_low (1.0: no lower bound, as MiniMax-M1)."""
    eps_high: float = 0.28
    """CISPO: importance weights are clipped above at 1 + eps_high."""
    scale_rewards: bool = True
    """Divide advantages by the group's reward std + 1e-6 (GRPO); False: only centre them (Dr. GRPO)."""
    kl_coef: float = 0.0
    """β of β·KL(π_θ‖π_ref), k3 estimator, π_ref = the frozen initial policy. 0: off, no reference copy."""
    reward: Literal["rlme", "rlvr", "mixture", "r_align"] = "rlme"
    """'rlme': the service's reward; 'rlvr': 1 if the response passes the `rule`, else 0;
    'mixture': rlme_weight · rlme + rlvr_weight · rlvr; 'r_align': train a pairwise judge on
    audit-format `data` with rlvr_weight · c + rlme_weight · c · P(aligned), c = verdict correct
    (trainer/r_align.py)."""
    rule: str | None = None
    """The rule check (trainer/rules.py): 'reference' (matches the row's reference), 'numbered_list',
    'polite'. RLVR's reward, and logged for every run as `rlvr/accuracy`, the measure that does not
    ask the evaluator. null: the shipped task's own, else 'reference' if every row has one, else none."""
    rlme_weight: float = 1.0
    """Weight of the service's reward in 'mixture'; of the alignment term in 'r_align'."""
    mask_low_label_mass: bool = True
    """A response the evaluator did not answer yes/no about (a score with `low_label_mass`) gets no
    reward: it is left out of its group's advantages (advantage 0) and counted in
    `reward/low_label_mass_frac`; in 'r_align' the same holds for a failed alignment check. False:
    its p_yes enters the reward like any other (in both)."""
    rlvr_weight: float = 1.0
    """Weight of the rule reward in 'mixture'; of label correctness in 'r_align'."""
    held_out_every: int = 4
    """'r_align': one row in N is held out, stratified by label and category (r_align.split;
    written to output_dir/held_out.jsonl for the audit); 0: train on every row."""
    sft_steps: int = 0
    """'r_align': SFT warm-up steps on the gold judgments before GRPO (`prompts_per_step` rows each)."""
    sft_lr: float = 1e-5
    """AdamW learning rate of the SFT warm-up."""
    rubric: str | None = "polite"
    """A rubric on the service (GET /v1/rubrics). Ignored when `questions` are given."""
    questions: list[dict[str, Any]] | None = None
    """Inline meta-questions instead of a rubric: [{id, text, weight, requires_reference}]."""
    anchor_fraction: float = 0.0
    """0..1: fraction of prompt groups whose `reference` the evaluator sees (RLME's 1-10% anchoring)."""
    evaluators: list[dict[str, Any]] | None = None
    """[{name, weight}] of evaluators configured on the service; null: its default evaluator.
    Frozen self / frozen other / ensemble are service configs (docs/trainer.md)."""
    live_self_every: int = 0
    """Live self (RLME): every N steps save the policy to output_dir/live_self and have the service
    reload `live_self_evaluator` from it. 0: off."""
    run: str | None = None
    """Run id for the service's run monitor (reward requests carry it and the step; the alarm
    is logged as `monitor/alarm` and shown in the progress bar). null: output_dir's folder name
    and the start time, made once and kept in output_dir/config.json, so a resumed run keeps it."""
    checkpoint_every: int = 0
    """Save a checkpoint every N steps; 0: only at the end (if save_final)."""
    save_final: bool = True
    """Save a checkpoint after the last step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algorithm != "grpo":
            raise ValueError(
                f"algorithm {self.algorithm!r}: this is the GRPO trainer ('meta_rewarding': trainer/dpo.py)"
            )
        if self.reward not in ("rlme", "rlvr", "mixture", "r_align"):
            raise ValueError(f"reward must be 'rlme', 'rlvr', 'mixture' or 'r_align', not {self.reward!r}")
        if self.mu < 1 or self.steps < 1 or self.prompts_per_step < 1:
            raise ValueError("mu, steps and prompts_per_step must be >= 1")
        if not 0.0 <= self.anchor_fraction <= 1.0:
            raise ValueError(f"anchor_fraction must be in [0, 1], not {self.anchor_fraction}")
        if self.rule is not None and self.rule not in RULES:
            raise ValueError(f"rule must be one of {sorted(RULES)}, not {self.rule!r}")
        if self.reward == "r_align" and self.rule not in (None, "judge_verdict"):
            raise ValueError(
                f"the 'r_align' reward checks verdicts with the 'judge_verdict' rule, not {self.rule!r}"
            )
        if self.sft_steps and self.kl_coef > 0:
            raise ValueError(
                "sft_steps with kl_coef > 0: the KL term's reference is the initial policy, so it would "
                "pull the policy back from its SFT warm-up; use kl_coef: 0 with sft_steps"
            )
        if self.sft_steps and self.reward != "r_align":
            raise ValueError("sft_steps is the 'r_align' warm-up on gold judgments; other rewards have none")
        if self.reward in ("rlme", "mixture") and self.rubric is None and not self.questions:
            raise ValueError(f"the {self.reward!r} reward needs a `rubric` or `questions`")


def load_config(path: str | Path) -> TrainConfig:
    """A TrainConfig from a YAML or JSON file of its fields; unknown fields are an error."""
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}  # YAML is a superset of JSON
    return config_from(TrainConfig, values, str(path))


# ---------------------------------------------------------------- pure maths, unit-tested


def group_advantages(rewards: torch.Tensor, scale_by_std: bool) -> torch.Tensor:
    """A = r − group mean, optionally / (group std + 1e-6). rewards: (P, G) -> (P, G).

    A NaN reward (a check that could not be made) is left out of its group's mean and
    std, and its advantage is 0: that response is not trained on."""
    valid = ~rewards.isnan()  # (P, G)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)  # (P, 1)
    filled = rewards.nan_to_num(0.0)
    centred = (filled - filled.sum(dim=1, keepdim=True) / count) * valid  # (P, G)
    if not scale_by_std:
        return centred
    std = ((centred**2).sum(dim=1, keepdim=True) / count).sqrt()  # population std over valid
    return centred / (std + STD_EPS)


def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    num_tokens: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """−Σ sg(clip(ρ)) · A · logp / N over masked tokens; N = `num_tokens` (default: mask.sum()).

    logp, old_logp, mask: (B, T); advantages: (B,). Pass the whole batch's token count as
    `num_tokens` when this is one micro-batch of it, so accumulated gradients equal the batch's.
    """
    mask = mask.to(logp.dtype)  # (B, T)
    n = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    ratio = torch.exp(logp - old_logp)  # (B, T): ρ_t = π_θ / π_old
    weight = ratio.clamp(1.0 - eps_low, 1.0 + eps_high).detach()  # (B, T): sg(clip(ρ_t))
    loss = -(weight * advantages[:, None] * logp * mask).sum() / n
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1)
        clipped = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).to(mask.dtype)
        metrics = {
            "loss/cispo_clip_frac": float((clipped * mask).sum() / tokens),
            "loss/ratio_mean": float((ratio * mask).sum() / tokens),
        }
    return loss, metrics


def kl_k3(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, num_tokens: int | torch.Tensor
) -> torch.Tensor:
    """Σ over masked tokens of k3 = e^d − d − 1, d = log π_ref − log π_θ, divided by N. (B, T) inputs."""
    d = ref_logp - logp  # (B, T)
    return ((torch.exp(d) - d - 1.0) * mask.to(logp.dtype)).sum() / num_tokens


# ---------------------------------------------------------------- update and checkpoints


def cispo_update(
    model: Any, optimizer: torch.optim.Optimizer, rollout: Rollout, old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None, advantages: torch.Tensor, cfg: TrainConfig,
) -> dict[str, float]:  # fmt: skip
    """One optimiser step on the whole batch: gradients accumulate over micro-batches."""
    mask = rollout.response_mask  # (B, T)
    num_tokens = mask.sum().clamp(min=1)
    totals = {"loss/cispo": 0.0, "loss/kl": 0.0, "loss/cispo_clip_frac": 0.0, "loss/ratio_mean": 0.0}
    for rows in micro_batches(len(advantages), cfg.micro_batch_size):
        logp = token_logprobs(model, rollout, rows, cfg.temperature)  # (b, T)
        loss, metrics = cispo_loss(
            logp, old_logp[rows], advantages[rows], mask[rows], cfg.eps_low, cfg.eps_high, num_tokens
        )
        totals["loss/cispo"] += loss.item()
        share = float(mask[rows].sum() / num_tokens)  # token-weighted average of per-micro-batch metrics
        for name, value in metrics.items():
            totals[name] += value * share
        if ref_logp is not None:
            kl = kl_k3(logp, ref_logp[rows], mask[rows], num_tokens)
            totals["loss/kl"] += kl.item()
            loss = loss + cfg.kl_coef * kl
        loss.backward()
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
    totals["loss/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, client: Any = None) -> Any:
    """Run GRPO + CISPO and return the trained model. `client`: a RewardClient (default: base_url's)."""
    from tqdm import tqdm

    from rlme.client import RewardClient

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = (
        training_rows(cfg.data, cfg.held_out_every, out) if cfg.reward == "r_align" else load_rows(cfg.data)
    )
    rule = resolve_rule(cfg, rows)
    G = cfg.group_size
    policy = load_policy(cfg, cfg.weight_decay)
    model, tokenizer, optimizer, start = policy.model, policy.tokenizer, policy.optimizer, policy.start
    ref_model: Any = None
    if cfg.kl_coef > 0:  # π_ref is the initial policy, also when resuming
        ref_model = policy.load_initial().requires_grad_(False)

    owns_client = client is None and reward_weights(cfg)[0] != 0
    if owns_client:
        client = RewardClient(base_url=cfg.base_url)
        client.wait_until_ready(timeout=cfg.service_wait_s)
    questions = meta_questions(client, cfg) if cfg.reward in ("rlme", "mixture") and cfg.rlme_weight else []
    if cfg.sft_steps and start == 1:  # a resumed run is past its warm-up
        sft = sft_warmup(model, tokenizer, rows, cfg)
        print(f"SFT warm-up: {len(sft)} steps, loss {sft[0]:.3f} -> {sft[-1]:.3f}")

    if cfg.run is None:
        cfg.run = new_run_id(cfg, out)
    history, writer = open_run(out, asdict(cfg), start, ("metrics.jsonl", "samples.jsonl"), "step")
    bar = tqdm(range(start, cfg.steps + 1), initial=start - 1, total=cfg.steps, desc="grpo")
    try:
        for step in bar:
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # sampling depends on (seed, step) only
            batch = [rows[i] for i in step_rows(len(rows), cfg.prompts_per_step, step, cfg.seed)]
            anchor_rng = random.Random(f"{cfg.seed}-anchor-{step}")
            anchored_groups = [anchor_rng.random() < cfg.anchor_fraction for _ in batch]
            prompts = [r["prompt"] for r in batch for _ in range(G)]  # B = P·G, groups contiguous
            references = [r.get("reference") for r in batch for _ in range(G)]
            anchored = [anchored_groups[i // G] and ref is not None for i, ref in enumerate(references)]

            t0 = time.perf_counter()
            systems = [r.get("system") for r in batch]
            rollout = sample_groups(model, tokenizer, [r["prompt"] for r in batch], cfg, systems)
            parts = micro_batches(len(prompts), cfg.micro_batch_size)
            with torch.no_grad():  # π_old and π_ref stay fixed for all mu passes
                old_logp = torch.cat([token_logprobs(model, rollout, s, cfg.temperature) for s in parts])
                ref_logp = None
                if ref_model is not None:
                    ref_logp = torch.cat(
                        [token_logprobs(ref_model, rollout, s, cfg.temperature) for s in parts]
                    )
            t1 = time.perf_counter()
            if cfg.reward == "r_align":  # (B,), NaN where the alignment check failed
                judged = [r["audit"] for r in batch for _ in range(G)]
                rewards, metrics = r_align_rewards(client, cfg, judged, rollout.texts)
            else:
                rewards, metrics = compute_rewards(
                    client, cfg, questions, prompts, rollout.texts, references, anchored, rule, step
                )  # (B,)
            t2 = time.perf_counter()
            by_group = rewards.view(-1, G)  # (P, G)
            advantages = group_advantages(by_group, cfg.scale_rewards).view(-1).to(policy.device)  # (B,)
            passes = [
                cispo_update(model, optimizer, rollout, old_logp, ref_logp, advantages, cfg)
                for _ in range(cfg.mu)
            ]
            t3 = time.perf_counter()
            if cfg.live_self_every > 0 and step % cfg.live_self_every == 0:
                push_live_self(model, tokenizer, cfg, client)

            lengths = rollout.response_mask.sum(1).float()  # (B,)
            metrics.update({name: mean([p[name] for p in passes]) for name in passes[0]})
            scored = rewards[~rewards.isnan()]
            if scored.numel():  # a batch whose every reward is masked has no mean (and no update)
                metrics["reward/mean"] = float(scored.mean())
                metrics["reward/std"] = float(scored.std(correction=0))
            metrics["reward/zero_std_groups"] = float((advantages.view(-1, G) == 0).all(dim=1).float().mean())
            metrics["response/length_mean"] = float(lengths.mean())
            metrics["response/truncated_frac"] = float((lengths == cfg.max_new_tokens).float().mean())
            metrics["anchor/fraction"] = mean([float(a) for a in anchored])
            metrics.update({"time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/update_s": t3 - t2})
            alarm = monitor_alarm(client, cfg) if "reward/rlme/mean" in metrics else None
            if alarm is not None:  # the service's run monitor: 0 ok, 1 watch, 2 alarm
                metrics["monitor/alarm"] = float(("ok", "watch", "alarm").index(alarm))
            history.append({"step": step, **metrics})
            write_jsonl(out / "metrics.jsonl", history[-1:], mode="a")
            for name, value in metrics.items():
                writer.add_scalar(name, value, step)
            group = {
                "step": step,
                "prompt": prompts[0],
                "responses": rollout.texts[:G],
                "rewards": [None if math.isnan(r) else r for r in by_group[0].tolist()],
            }
            write_jsonl(out / "samples.jsonl", [group], mode="a")  # the first group, to read what pays
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", **({"alarm": alarm} if alarm else {}))
            if (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or (
                cfg.save_final and step == cfg.steps
            ):
                save_checkpoint(model, tokenizer, optimizer, step, cfg)
    finally:
        bar.close()
        writer.close()
        if owns_client:
            client.close()
    if history:
        plot_rewards(history, out / "rewards.png")
    return model


def main(config_path: str) -> None:
    """`rlme train --config FILE`: train with the TrainConfig fields in a YAML or JSON file."""
    train(load_config(config_path))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="GRPO + CISPO with rewards from the rlme service.")
    parser.add_argument("--config", required=True, help="YAML or JSON file of TrainConfig fields")
    main(parser.parse_args().config)
