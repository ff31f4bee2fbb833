"""What the benchmarks measure alike: the machine's matmul peak (the figure every table is
read against) and the left-padded batch a transformers user scores with (the baseline)."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    size: int = 1024,
    repeats: int = 20,
) -> float:
    """Best FLOP/s of one square `size` matmul on `device` (default: the CPU) in `dtype`."""
    device = device or torch.device("cpu")
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def left_padded(chunk: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of `chunk`, left-padded: every answer is the last column."""
    width = max(map(len, chunk))
    ids = torch.zeros((len(chunk), width), dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for b, sequence in enumerate(chunk):
        ids[b, width - len(sequence) :], mask[b, width - len(sequence) :] = torch.tensor(sequence), 1
    return ids, mask
