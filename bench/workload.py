"""Deterministic benchmark items: grade-school word problems with worked answers."""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo"]
THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps"]

QUESTIONS = [
    {"id": "correct", "text": "Is the answer correct?"},
    {"id": "logical", "text": "Does the whole solution logically lead from the question to an answer?"},
    {"id": "length", "text": "Is the length of the response between 200 and 500 characters?"},
    {"id": "polite", "text": "Is the response polite?"},
]


def word_problem(rng: random.Random, steps: int) -> dict[str, str]:
    """An item whose response has `steps` lines of arithmetic (~18 tokens each)."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    total = rng.randint(5, 50)
    lines = [f"{name} starts with {total} {thing}."]
    prompt_parts = [f"{name} has {total} {thing}."]
    for _ in range(steps):
        amount = rng.randint(1, 20)
        if rng.random() < 0.5:
            prompt_parts.append(f"A friend gives {name} {amount} more.")
            lines.append(
                f"After receiving {amount} more, {name} has {total} + {amount} = {total + amount} {thing}."
            )
            total += amount
        else:
            prompt_parts.append(f"{name} buys {amount} more at the shop.")
            lines.append(
                f"Buying {amount} more gives {total} + {amount} = {total + amount} {thing} in total."
            )
            total += amount
    prompt = " ".join(prompt_parts) + f" How many {thing} does {name} have now?"
    response = "\n".join(lines) + f"\nThe answer is {total}."
    return {"prompt": prompt, "response": response, "reference": str(total)}


def items(n: int, steps: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [word_problem(rng, steps) for _ in range(n)]


# GRPO-shaped requests (bench_grpo_peers.py, gpu_bench.py)
GRPO_QUESTIONS = [
    {"id": "correct", "text": "Is the answer correct?"},
    {"id": "logical", "text": "Does the whole solution logically lead from the question to an answer?"},
    {"id": "polite", "text": "Is the response polite?"},
]


def grpo_request(prompt_tokens: int, seed: int = 0) -> list[dict[str, str]]:
    """4 prompts of about `prompt_tokens` tokens, 8 different worked answers each."""
    rng = random.Random(seed)
    items = []
    for p in range(4):
        base = word_problem(rng, steps=2)
        context = f"Problem {p + 1}. " + " ".join(
            word_problem(rng, 3)["prompt"] for _ in range(prompt_tokens // 60)
        )
        prompt = f"{context}\n{base['prompt']}"
        for g in range(8):
            answer = word_problem(random.Random(f"{seed}-{p}-{g}"), steps=2)["response"]
            items.append({"prompt": prompt, "response": answer})
    return items


def long_request(seed: int = 0) -> list[dict[str, str]]:
    """2 prompts, 8 worked answers of ~800 tokens each (about 45 steps of arithmetic)."""
    rng, items = random.Random(seed), []
    for p in range(2):
        prompt = word_problem(rng, steps=3)["prompt"]
        for g in range(8):
            answer = word_problem(random.Random(f"{seed}-long-{p}-{g}"), steps=45)["response"]
            items.append({"prompt": prompt, "response": answer})
    return items


WORKLOADS: dict[str, Callable[[], list[dict[str, str]]]] = {
    "short": lambda: grpo_request(100),
    "prompt1000": lambda: grpo_request(1000),
    "long": long_request,
}
