"""Meta-Rewarding: iterative DPO of a model as actor and as judge, all judging by the service.

Read top to bottom: config, the pure maths (DPO loss, pair selection), the update, the pairs
of an iteration, `train()`; the calls to the service's judges are trainer/meta_judging.py,
what every trainer shares trainer/common.py.
Run: `rlme train --config examples/meta_rewarding.yaml` (`algorithm: meta_rewarding`).

Objective (Rafailov et al. 2023, DPO). For a pair (x, y_w, y_l), with π_ref the policy at
the start of the iteration and s(y) = log π(y | x) summed over the response's tokens:

    L(θ) = −log σ(β · [(s_θ(y_w) − s_ref(y_w)) − (s_θ(y_l) − s_ref(y_l))])

Each iteration (Wu et al. 2024, Meta-Rewarding LMs, arXiv 2407.19594):
1. Actor: sample K responses per prompt from the current policy.
2. Judge: N judgments per response by the service (`judge`: the additive rubric, 0 to 5
   points); score = mean expected score of the usable judgments (masked ones dropped).
3. Actor pairs with length control: S_max, S_min the best and worst scores; chosen = the
   shortest response scoring in [(1−ρ)S_max + ρS_min, S_max], rejected = the longest in
   [S_min, (1−ρ)S_min + ρS_max]; no pair when the scores tie (spread < `tie_margin`).
4. Judge pairs: per prompt, the response whose judgments' stated scores have the largest
   variance; the meta-judge battles its N judgments in both orders (position-weighted,
   Bradley–Terry: service /v1/meta-judgments); chosen = strongest, rejected = weakest
   judgment, dropped when the chosen one is longer than `max_judgment_chars`.
5. DPO on actor pairs and (in the first `judge_iterations` iterations) judge pairs, judge
   pairs' loss weighted by `judge_loss_weight`; then (`live_self`, the default) the
   service's evaluator reloads the new weights, so the model that acts also judges and
   meta-judges in the next iteration (the paper's one model in three roles). `live_self: false` keeps a frozen
   judge instead (the initial model judges every iteration).

An independent measure every iteration: on held-out prompts, greedy responses of the
current policy against the initial policy's, compared by a *frozen* evaluator through
/v1/comparisons (both orders; win rate = mean P(new better)), and a rule check where the
task has one.

Departures from the paper: no SFT warm-up on judge data; a small model and few samples
(the paper: Llama-3-8B, K = 7, N = 11, T = 0.8, top-p 0.95; ours has no top-p so π_old
is the distribution sampled from); scores are expected scores read from the judge's label
probabilities (the paper parses the text's "Score: k"); battles are soft (a win is the
meta-judge's probability, not a 0/1 parse); the judgment shown to the meta-judge and
trained on is its rationale plus "Score: k" with k its most probable label, and the
variance that picks the judged response is of those k; a judge pair whose two judgments
state the same score is dropped (ours: DPO between two equal verdicts teaches only
wording); the meta-judge's prompt also says not to prefer a judgment for its length or a
higher score (service/judging/templates.py META); the independent win-rate measure by a frozen
evaluator is ours; an actor pair needs a score spread of at least `tie_margin` (0.05), where
the notes say only "no pair when all scores tie".

What we know of the paper's procedure beyond its abstract comes from secondary write-ups
(summaries, a survey, notes; docs/meta_rewarding.md), which agree with each other but were
not checked against the paper's text: the judged response picked by the variance of its
judges' scores, battles in both orders with the position weights and a rating whose best
and worst make the pair, judge pairs only in iterations 1-2 (and why), K = 7, N = 11,
T = 0.8, top-p 0.95, the length-control rule and ρ's schedule, β 0.1 and lr 5e-6, the
~1,000-1,100-character judgment limit, and the SFT warm-up on judge data.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlme.trainer.common import (
    PolicyFields,
    config_from,
    greedy,
    load_policy,
    load_rows,
    micro_batches,
    push_live_self,
    sample_groups,
    save_checkpoint,
    sequence_logps,
    step_rows,
)
from rlme.trainer.meta_judging import (
    judge_responses,
    judge_template,
    judgment_text,
    score_variance,
    stated_scores,
    win_rate,
)
from rlme.trainer.outputs import open_run, plot_iterations, write_jsonl
from rlme.trainer.rules import RULES


@dataclass
class MetaRewardingConfig(PolicyFields):
    """Meta-Rewarding's settings: the shared policy fields (trainer/common.py PolicyFields) with
    these defaults, and the fields below."""

    data: str = "lists"
    group_size: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.8
    lr: float = 5e-6
    micro_batch_size: int = 4
    output_dir: str = "runs/meta_rewarding"

    algorithm: Literal["meta_rewarding"] = "meta_rewarding"
    """Chooses this trainer in `rlme train` (GRPO: 'grpo')."""
    rule: str | None = None
    """A rule of trainer/rules.py logged on held-out responses ('numbered_list', ...); null: none."""
    iterations: int = 2
    """Meta-Rewarding iterations (the paper: 4)."""
    prompts_per_iteration: int = 8
    """Prompts whose responses are judged each iteration."""
    judge: str = "additive_5"
    """The service's pointwise judge (GET /v1/judges): 'additive_5' is the papers' 0-5 rubric."""
    judgments: int = 3
    """N: judgments per response (sampled when > 1)."""
    judge_temperature: float = 0.8
    """Sampling temperature of the judge; the N judgments must differ for the meta-judge to rank them."""
    judge_max_tokens: int = 96
    """Longest rationale, in tokens."""
    judge_evaluator: str | None = None
    """The service evaluator that judges and meta-judges; null: its default."""
    frozen_evaluator: str | None = None
    """The evaluator of the independent win-rate measure; it must never be reloaded. null: 'frozen'
    with `live_self` (a second evaluator on the service), else the service's default."""
    length_control: float = 0.2
    """ρ in [0, 0.5]: how far below the best score a shorter response may still be chosen (0: max/min)."""
    tie_margin: float = 0.05
    """No actor pair when S_max − S_min is below this."""
    judge_iterations: int = 2
    """Judge pairs are trained on in the first this-many iterations (the paper: 2)."""
    max_judgment_chars: int = 1100
    """A judge pair whose chosen judgment is longer than this is dropped (length balance)."""
    judge_loss_weight: float = 1.0
    """Weight of the judge pairs' DPO loss beside the actor pairs'."""
    beta: float = 0.1
    """DPO β."""
    epochs: int = 2
    """Passes over an iteration's pairs."""
    eval_prompts: int = 8
    """Held-out prompts (the last rows of the data) for the independent measure; never trained on."""
    live_self: bool = True
    """Reload `live_self_evaluator` on the service with the policy after each iteration: the model
    judges itself (the paper). False: a frozen judge, the initial model, judges every iteration."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.judgments < 1 or self.iterations < 1:
            raise ValueError("judgments and iterations must be >= 1")
        if not 0.0 <= self.length_control <= 0.5:
            raise ValueError(f"length_control (ρ) must be in [0, 0.5], not {self.length_control}")
        if self.rule is not None and self.rule not in RULES:
            raise ValueError(f"rule must be one of {sorted(RULES)}, not {self.rule!r}")
        live = self.live_self_evaluator
        if self.live_self and self.referee == live:
            raise ValueError(
                f"live_self reloads evaluator {live!r} every iteration, so it cannot be the frozen "
                "referee: set frozen_evaluator to a second evaluator of the service "
                "(examples/meta_rewarding_service.yaml), or live_self: false"
            )

    @property
    def referee(self) -> str | None:
        """The evaluator of the win-rate measure (None: the service's default)."""
        if self.frozen_evaluator is not None:
            return self.frozen_evaluator
        return "frozen" if self.live_self else None


def load_config(values: dict[str, Any], source: str) -> MetaRewardingConfig:
    """Checked like GRPO's config: unknown fields and wrongly typed scalars are errors."""
    config: MetaRewardingConfig = config_from(MetaRewardingConfig, values, source)
    return config


# ---------------------------------------------------------------- pure maths, unit-tested


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """−log σ(β·[(π_c − ref_c) − (π_r − ref_r)]), a weighted mean over pairs. Inputs: (B,)."""
    chosen = beta * (policy_chosen_logp - ref_chosen_logp)  # (B,) implicit rewards
    rejected = beta * (policy_rejected_logp - ref_rejected_logp)  # (B,)
    margin = chosen - rejected  # (B,)
    w = torch.ones_like(margin) if weights is None else weights
    loss = -(torch.nn.functional.logsigmoid(margin) * w).sum() / w.sum()
    with torch.no_grad():
        metrics = {
            "dpo/margin": float(margin.mean()),
            "dpo/accuracy": float((margin > 0).float().mean()),
            "dpo/chosen_reward": float(chosen.mean()),
            "dpo/rejected_reward": float(rejected.mean()),
        }
    return loss, metrics


def actor_pair(
    scores: list[float], lengths: list[int], rho: float, tie_margin: float
) -> tuple[int, int] | None:
    """(chosen, rejected) indices by the length control the secondary notes describe, or None on a tie."""
    best, worst = max(scores), min(scores)
    if best - worst < tie_margin:
        return None
    high = [i for i, s in enumerate(scores) if s >= (1 - rho) * best + rho * worst]
    low = [i for i, s in enumerate(scores) if s <= (1 - rho) * worst + rho * best]
    chosen = min(high, key=lambda i: (lengths[i], -scores[i]))
    rejected = max(low, key=lambda i: (lengths[i], -scores[i]))
    return None if chosen == rejected else (chosen, rejected)


def judge_pair_reason(
    chosen_score: int, rejected_score: int, chosen_chars: int, max_chars: int
) -> str | None:
    """Why a meta-judged (chosen, rejected) judgment pair is dropped, or None to keep it."""
    if chosen_score == rejected_score:
        return "same score"
    if chosen_chars > max_chars:
        return "chosen judgment too long"
    return None


# ---------------------------------------------------------------- the update


def dpo_update(
    model: Any,
    ref: Any,
    tokenizer: Any,
    optimizer: Any,
    pairs: list[dict[str, Any]],
    cfg: MetaRewardingConfig,
) -> dict[str, float]:
    """`epochs` optimiser steps over all pairs (gradients accumulate over micro-batches)."""

    def logps(policy: Any, part: list[dict[str, Any]], side: str) -> torch.Tensor:
        prompts, texts = [p["prompt"] for p in part], [p[side] for p in part]
        return sequence_logps(policy, tokenizer, prompts, texts, [p[f"{side}_ended"] for p in part])

    parts = micro_batches(len(pairs), cfg.micro_batch_size)
    with torch.no_grad():  # π_ref is fixed for the iteration
        ref_c = torch.cat([logps(ref, pairs[s], "chosen") for s in parts])  # (P,)
        ref_r = torch.cat([logps(ref, pairs[s], "rejected") for s in parts])  # (P,)
    weights = torch.tensor([cfg.judge_loss_weight if p["kind"] == "judge" else 1.0 for p in pairs])
    history: list[dict[str, float]] = []
    for _ in range(cfg.epochs):
        totals: dict[str, float] = {}
        for s in parts:
            chosen, rejected = logps(model, pairs[s], "chosen"), logps(model, pairs[s], "rejected")
            if float(weights[s].sum()) == 0:  # only pairs that do not count: no gradient, no NaN
                continue
            loss, metrics = dpo_loss(
                chosen, rejected, ref_c[s], ref_r[s], cfg.beta, weights[s].to(chosen.device)
            )
            share = float(weights[s].sum() / weights.sum())
            (loss * share).backward()
            for name, value in {"dpo/loss": loss.item(), **metrics}.items():
                totals[name] = totals.get(name, 0.0) + value * (s.stop - s.start) / len(pairs)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        totals["dpo/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(totals)
    return history[-1]


# ---------------------------------------------------------------- the loop


def iteration_pairs(
    client: Any,
    cfg: MetaRewardingConfig,
    prompts: list[str],
    texts: list[str],
    ended: list[bool],
    template: Any,
    judge_prompt: Any,
    train_judge: bool,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Steps 2-4: judge every response, then the actor and judge pairs with why each was kept."""
    K = cfg.group_size
    results = judge_responses(client, cfg, prompts, texts)
    pairs: list[dict[str, Any]] = []
    scores_all = [r.score for r in results if r.score is not None]
    metrics: dict[str, float] = {"judge/masked_frac": sum(r.mask for r in results) / len(results)}
    for status in sorted({r.status for r in results}):  # why items were masked: timeout, error, ...
        metrics[f"judge/status_{status}"] = sum(r.status == status for r in results) / len(results)
    for value in template.label_values:  # the share of responses per rounded score
        k = round(value)
        metrics[f"judge/score_{k}"] = sum(round(s) == k for s in scores_all) / max(1, len(scores_all))
    metrics["judge/score_mean"] = sum(scores_all) / max(1, len(scores_all))
    skipped = {"tie": 0, "masked": 0, "same score": 0, "chosen judgment too long": 0, "no spread": 0}
    for g in range(0, len(texts), K):
        group = results[g : g + K]
        usable = [i for i, r in enumerate(group) if r.score is not None]
        if len(usable) < 2:
            skipped["masked"] += 1
            continue
        scores = [group[i].score for i in usable]
        lengths = [len(texts[g + i]) for i in usable]
        chosen = actor_pair(scores, lengths, cfg.length_control, cfg.tie_margin)
        if chosen is None:
            skipped["tie"] += 1
        else:
            c, r = usable[chosen[0]], usable[chosen[1]]
            pairs.append(
                {
                    "kind": "actor",
                    "prompt": prompts[g],
                    "chosen": texts[g + c],
                    "rejected": texts[g + r],
                    "chosen_ended": ended[g + c],
                    "rejected_ended": ended[g + r],
                    "chosen_score": group[c].score,
                    "rejected_score": group[r].score,
                    "reason": f"length-controlled best/worst of {K} (rho {cfg.length_control})",
                }
            )
        if not train_judge:
            continue
        variance = {i: score_variance(stated_scores(group[i], template)) for i in usable}
        target = max(variance, key=lambda i: variance[i])
        judgments = [j for j in group[target].judgments if j.expected_score is not None]
        if len(judgments) < 2 or variance[target] == 0:
            skipped["no spread"] += 1
            continue
        shown = [judgment_text(j, template.cue) for j in judgments]
        stated = stated_scores(group[target], template)
        meta = client.meta_judge(
            prompts[g],
            texts[g + target],
            shown,
            judgment_scores=stated,
            max_tokens=cfg.judge_max_tokens,
            evaluator=cfg.judge_evaluator,
        )
        if meta.chosen is None or meta.rejected is None:
            skipped["no spread"] += 1
            continue
        why = judge_pair_reason(
            stated[meta.chosen], stated[meta.rejected], len(shown[meta.chosen]), cfg.max_judgment_chars
        )
        if why is not None:
            skipped[why] += 1
            continue
        pairs.append(
            {
                "kind": "judge",
                "prompt": judge_prompt(prompts[g], texts[g + target]),
                "chosen": shown[meta.chosen],
                "rejected": shown[meta.rejected],
                "chosen_ended": True,
                "rejected_ended": True,
                "chosen_score": stated[meta.chosen],
                "rejected_score": stated[meta.rejected],
                "battle_scores": meta.scores,
                "position_bias": meta.position_bias,
                "score_bias": meta.score_bias,
                "reason": f"meta-judge Bradley-Terry best/worst of {len(shown)} judgments",
            }
        )
    metrics.update({f"pairs/skipped_{k.replace(' ', '_')}": float(v) for k, v in skipped.items()})
    return pairs, metrics


def train(cfg: MetaRewardingConfig, client: Any = None) -> Any:
    """Run the Meta-Rewarding iterations; returns the trained model."""
    from tqdm import tqdm

    from rlme.client import RewardClient
    from rlme.service.judging.templates import fill

    rows = load_rows(cfg.data)
    held_out = [r["prompt"] for r in rows[-cfg.eval_prompts :]] if cfg.eval_prompts else []
    train_rows = rows[: len(rows) - len(held_out)]
    policy = load_policy(cfg, weight_decay=0.01)  # torch AdamW's default, which this trainer always used
    model, tokenizer, optimizer, start = policy.model, policy.tokenizer, policy.optimizer, policy.start
    owns_client = client is None
    if owns_client:
        client = RewardClient(base_url=cfg.base_url, timeout=3600)
        client.wait_until_ready(timeout=cfg.service_wait_s)
    template = judge_template(client, cfg)

    def judge_prompt(prompt: str, response: str) -> str:  # what the model reads as a judge
        return f"{template.system_prompt}\n\n{fill(template, {'prompt': prompt, 'response': response})}"

    out = Path(cfg.output_dir)
    history, writer = open_run(out, asdict(cfg), start, ("metrics.jsonl", "pairs.jsonl"), "iteration")
    baseline_path = out / "initial_responses.json"  # the initial policy's held-out answers, kept
    if not baseline_path.exists():  # from the initial weights, also when resuming
        first = model if not cfg.resume else policy.load_initial()
        baseline_path.write_text(json.dumps(greedy(first, tokenizer, held_out, cfg.max_new_tokens)))
        del first
    if cfg.resume and cfg.live_self:  # the service may have restarted on older weights
        push_live_self(model, tokenizer, cfg, client)
    baseline = json.loads(baseline_path.read_text())
    bar = tqdm(
        range(start, cfg.iterations + 1), initial=start - 1, total=cfg.iterations, desc="meta-rewarding"
    )
    try:
        for it in bar:
            torch.manual_seed(cfg.seed * 1_000_003 + it)
            batch = [
                train_rows[i]["prompt"]
                for i in step_rows(len(train_rows), cfg.prompts_per_iteration, it, cfg.seed)
            ]
            t0 = time.perf_counter()
            # 1. actor: K samples per prompt (trainer/common.py, as GRPO samples its groups).
            rollout = sample_groups(model, tokenizer, batch, cfg)
            prompts = [p for p in batch for _ in range(cfg.group_size)]
            t1 = time.perf_counter()
            eos = model.generation_config.eos_token_id
            eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=rollout.sequences.device)
            ended = torch.isin(rollout.sequences[:, rollout.prompt_len :], eos_ids).any(1).tolist()
            train_judge = it <= cfg.judge_iterations and cfg.judge_loss_weight > 0
            pairs, metrics = iteration_pairs(
                client, cfg, prompts, rollout.texts, ended, template, judge_prompt, train_judge
            )
            t2 = time.perf_counter()
            if pairs:  # 5. DPO against the policy at the start of the iteration
                reference = policy.load_initial()
                reference.load_state_dict(model.state_dict())
                reference.requires_grad_(False)
                random.Random(f"{cfg.seed}-{it}").shuffle(pairs)
                metrics.update(dpo_update(model, reference, tokenizer, optimizer, pairs, cfg))
                del reference
            t3 = time.perf_counter()
            if cfg.live_self:
                push_live_self(model, tokenizer, cfg, client)
            answers = greedy(model, tokenizer, held_out, cfg.max_new_tokens)
            if held_out:
                metrics["eval/win_rate_vs_initial"] = win_rate(client, cfg, held_out, answers, baseline)
                metrics["eval/response_chars"] = sum(map(len, answers)) / len(answers)
            if cfg.rule is not None and held_out:
                metrics["eval/rule_accuracy"] = sum(RULES[cfg.rule](a, None) for a in answers) / len(answers)
                metrics["eval/rule_accuracy_initial"] = sum(RULES[cfg.rule](a, None) for a in baseline) / len(
                    baseline
                )
            metrics["pairs/actor"] = float(sum(p["kind"] == "actor" for p in pairs))
            metrics["pairs/judge"] = float(sum(p["kind"] == "judge" for p in pairs))
            metrics["response/chars_mean"] = sum(map(len, rollout.texts)) / len(rollout.texts)
            metrics.update({"time/rollout_s": t1 - t0, "time/judging_s": t2 - t1, "time/update_s": t3 - t2})
            history.append({"iteration": it, **metrics})
            write_jsonl(out / "metrics.jsonl", history[-1:], mode="a")
            write_jsonl(out / "pairs.jsonl", [{"iteration": it, **p} for p in pairs], mode="a")
            for name, value in metrics.items():
                writer.add_scalar(name, value, it)
            bar.set_postfix(
                pairs=len(pairs), win=f"{metrics.get('eval/win_rate_vs_initial', float('nan')):.2f}"
            )
            save_checkpoint(model, tokenizer, optimizer, it, cfg)
    finally:
        bar.close()
        writer.close()
        if owns_client:
            client.close()
    if history:
        plot_iterations(history, out / "meta_rewarding.png")
    return model


def main(config_path: str) -> None:
    """`rlme train --config FILE` with `algorithm: meta_rewarding`."""
    import yaml

    train(load_config(yaml.safe_load(Path(config_path).read_text()) or {}, config_path))
