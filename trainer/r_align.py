"""R-Align training of a generative judge: right verdicts, for the right reasons.

The GRPO trainer with `reward: r_align` trains the policy *as a pairwise judge* on
audit-format rows (trainer/audit.py: prompt, response_a, response_b, label,
gold_rationale). The policy reads the service's built-in `pairwise` judge prompt (its
system prompt and template) with response_a shown first, and writes a rationale and
"Verdict: A|B". Its reward is label-gated:

    r = w_label · c  +  w_align · c · P(aligned)      c = [written verdict == label]

with w_label = `rlvr_weight`, w_align = `rlme_weight`, and P(aligned) the aligner
evaluator's P(yes) to the audit's ALIGNMENT_QUESTION, in the audit's item layout for an
A-first judgment (trainer/audit.py: alignment_item), the gold rationale as `reference`.
The alignment term is asked only for label-correct judgments: a wrong verdict earns
nothing, whatever its reasons; a right verdict with no rationale before it gets
P(aligned) = 0 (a first CPU run without this rule learned to write only "Verdict: A",
which the 135M aligner still called aligned about half the time). An alignment check
the aligner could not make (labels got less than its `min_label_mass`) is not a number:
that judgment is left out of its group's advantages (advantage 0) and counted in
`r_align/alignment_failures` and `reward/low_label_mass_frac`, as the rlme reward treats a
score with low label mass (`mask_low_label_mass`; false: its P(yes) is used as it is).
An optional SFT warm-up (`sft_steps`) first teaches the format on the gold judgments
(gold rationale + "Verdict: label") of the training rows.

This objective is our construction, inspired by R-Align (arXiv 2602.06763), not the
authors' own: notes on the paper describe an SFT warm-up on gold judgments, then GRPO with
a reward gated by the label, but the exact training objective is not public (what we have
read of it is in docs/fidelity.md). Further departures:
- the verdict is a written "Verdict: A" after the service's cue, not `\\boxed{A}`;
- the rationale check is an evaluator's P(yes) to one meta-question, used as a number,
  not a strong LLM's binary Correct/Incorrect; the empty-rationale rule is ours;
- the policy is optimised with this repository's GRPO loop (trainer/grpo.py: CISPO loss,
  group-normalised advantages).

What the audit reads of the trained judge: its headline (one generation, response_a shown
first) uses the same prompt and order as training, and audits that generation's rationale
and verdict. It reads the verdict as the probability of each label after the cue of a
greedy generation, where training rewards the label the policy wrote in a sampled one;
the audit also reports the written verdict's accuracy (`written_label_accuracy`), which
is what this reward counts.

Held-out rows (`held_out_every`, see `split`) are never trained on; the trainer writes
them to OUTPUT/held_out.jsonl so the audit can be run on them before and after.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rlme.trainer.audit import ALIGNMENT_QUESTION, AuditRow, read_rows
from rlme.trainer.audit import alignment_item as audit_alignment_item

DATA_DIR = Path(__file__).parent / "data"
ALIGNMENT = {"id": "aligned", "text": ALIGNMENT_QUESTION, "requires_reference": True}


def audit_file(data: str) -> Path:
    """'audit_pairs' is the shipped set; anything else is a path."""
    return DATA_DIR / "audit_pairs.jsonl" if data == "audit_pairs" else Path(data)


def split(rows: list[AuditRow], held_out_every: int) -> tuple[list[AuditRow], list[AuditRow]]:
    """(train, held out), stratified by label and category: rows sorted by (label,
    category, file order), every `held_out_every`-th of them (positions 0, N, 2N, ...) held
    out. Each label, and each (label, category), keeps within one row of 1/N of its rows,
    so a constant verdict scores on the held-out rows what it scores on the file."""
    if held_out_every <= 0:
        return rows, []
    ranked = sorted(rows, key=lambda r: (r.label, r.category, r.index))
    held_ids = {r.index for r in ranked[::held_out_every]}
    return [r for r in rows if r.index not in held_ids], [r for r in rows if r.index in held_ids]


def write_rows(rows: list[AuditRow], path: Path) -> None:
    """Audit-format JSONL, readable by `rlme audit --data`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = ("id", "category", "prompt", "response_a", "response_b", "label", "gold_rationale", "distractor")
    path.write_text("".join(json.dumps({k: asdict(r)[k] for k in keep}) + "\n" for r in rows))


def judge_prompt(row: AuditRow) -> tuple[str, str]:
    """(system, user) messages of the service's pairwise judge for this row, A first."""
    from rlme.service.judging.templates import PAIRWISE, fill

    values = {"prompt": row.prompt, "response_a": row.response_a, "response_b": row.response_b}
    return PAIRWISE.system_prompt or "", fill(PAIRWISE, values)


def training_rows(data: str, held_out_every: int, output_dir: Path) -> list[dict[str, Any]]:
    """Trainer rows (prompt, system, reference = the label) for the training split; the
    held-out split is written to output_dir/held_out.jsonl."""
    rows = read_rows(audit_file(data))
    train, held = split(rows, held_out_every)
    if not train:
        raise ValueError(f"{data}: no training rows left with held_out_every={held_out_every}")
    if held:
        write_rows(held, output_dir / "held_out.jsonl")
    out = []
    for row in train:
        system, user = judge_prompt(row)
        out.append({"prompt": user, "system": system, "reference": row.label, "audit": row})
    return out


def gold_judgment(row: AuditRow) -> str:
    return f"{row.gold_rationale.strip()}\nVerdict: {row.label}"


def alignment_item(row: AuditRow, judgment: str) -> dict[str, str]:
    """What the aligner reads: the audit's item for an A-first judgment (trainer/audit.py)."""
    from rlme.service.judging.templates import PAIRWISE, split_verdict

    rationale, verdict, _ = split_verdict(judgment, PAIRWISE.cue, PAIRWISE.labels)
    return audit_alignment_item(asdict(row), rationale, verdict or "", "ab")


def rewards(
    client: Any, cfg: Any, rows: list[AuditRow], texts: list[str]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Label-gated rewards (B,), NaN where the alignment check failed, and their metrics."""
    from rlme.trainer.rules import judge_verdict_rule

    correct = [judge_verdict_rule(y, row.label) for row, y in zip(rows, texts, strict=True)]
    aligned: list[float | None] = [None] * len(texts)
    # A judgment with no rationale names no reason: it cannot be aligned (the aligner is not
    # asked; a weak one says "Yes" to an empty rationale, and a policy learns to drop it).
    for i, y in enumerate(texts):
        if correct[i] and not rationale_of(y):
            aligned[i] = 0.0
    todo = [i for i, c in enumerate(correct) if c and aligned[i] is None]
    failures = 0
    if todo and cfg.rlme_weight != 0:
        questions = cfg.questions or [ALIGNMENT]
        answer = client.rewards(
            [alignment_item(rows[i], texts[i]) for i in todo], questions=questions, evaluators=cfg.evaluators
        )
        for i, result in zip(todo, answer.results, strict=True):
            if any(s.low_label_mass for s in result.scores):
                failures += 1
                if cfg.mask_low_label_mass:  # as the rlme reward does (trainer/rewards.py)
                    continue
            weights = [s.evaluator_weight * s.weight for s in result.scores]
            aligned[i] = sum(w * s.p_yes for w, s in zip(weights, result.scores, strict=True)) / sum(weights)
    values = []
    for c, p in zip(correct, aligned, strict=True):
        if c and cfg.rlme_weight != 0 and p is None:
            values.append(math.nan)
        else:
            values.append(cfg.rlvr_weight * c + cfg.rlme_weight * c * (p or 0.0))
    checked = [p for p in aligned if p is not None]
    metrics = {
        "rlvr/accuracy": sum(correct) / len(correct),
        "r_align/parsed": sum(_parsed(y) for y in texts) / len(texts),
        "r_align/p_aligned_mean": sum(checked) / len(checked) if checked else math.nan,
        "r_align/alignment_failures": float(failures),
        # the same share the rlme reward logs, over the batch
        "reward/low_label_mass_frac": failures / len(texts),
    }
    return torch.tensor(values, dtype=torch.float32), metrics


def rationale_of(judgment: str) -> str:
    """The text before the judgment's last verdict cue, stripped."""
    from rlme.service.judging.templates import PAIRWISE, split_verdict

    return split_verdict(judgment, PAIRWISE.cue, PAIRWISE.labels)[0].strip()


def _parsed(text: str) -> bool:
    from rlme.service.judging.templates import PAIRWISE, split_verdict

    return split_verdict(text, PAIRWISE.cue, PAIRWISE.labels)[1] is not None


def sft_warmup(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: Any) -> list[float]:
    """`sft_steps` AdamW steps of cross-entropy on the gold judgments (response tokens only,
    closed by EOS), `prompts_per_step` rows per step. Returns the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, fused=True)
    rng = random.Random(f"{cfg.seed}-sft")
    losses = []
    model.train()
    for _ in range(cfg.sft_steps):
        batch = rng.sample(rows, min(cfg.prompts_per_step, len(rows)))
        ids, starts = [], []
        for row in batch:
            chat = [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["prompt"]}]
            head = list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False))
            tail = tokenizer(gold_judgment(row["audit"]), add_special_tokens=False).input_ids
            ids.append([*head, *tail, tokenizer.eos_token_id])
            starts.append(len(head))
        width = max(map(len, ids))
        batch_ids = torch.full((len(ids), width), tokenizer.pad_token_id or 0, dtype=torch.long)  # (b, L)
        labels = torch.full((len(ids), width), -100, dtype=torch.long)  # (b, L): -100 = not trained on
        for b, (row_ids, start) in enumerate(zip(ids, starts, strict=True)):
            batch_ids[b, : len(row_ids)] = torch.tensor(row_ids)
            labels[b, start : len(row_ids)] = torch.tensor(row_ids[start:])
        # Right padding: real tokens never attend to it; padded positions carry no labels.
        loss = model(input_ids=batch_ids.to(model.device), labels=labels.to(model.device)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses
