"""Per-sample random streams, so every branch is reproducible on its own and independent of the others.

A batch row's noise depends only on its own seed, never on the batch size or on the other rows: sampling a
branch alone or among G siblings gives the same result.
"""

from __future__ import annotations

from typing import Sequence

import torch

SEED_MODULUS = 2**64  # torch generators take 64-bit seeds; branch g of seed 2**64 - 1 wraps to g - 1, as the host's


def wrap_seed(seed: int) -> int:
    """``seed`` modulo 2**64: unchanged for every seed a generator accepts, so existing seeds replay exactly."""
    return int(seed) % SEED_MODULUS


class BranchNoise:
    """One CPU ``torch.Generator`` per batch row (CPU generators give the same numbers on every device)."""

    def __init__(self, seeds: Sequence[int]):
        if len(seeds) < 1:
            raise ValueError("seeds must hold at least one seed (one per batch row)")
        self.seeds = [wrap_seed(s) for s in seeds]
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    @classmethod
    def for_batch(cls, seed: int, batch: int) -> "BranchNoise":
        """Rows seeded seed, seed + 1, ... (ComfyUI's convention for batch seeds)."""
        return cls([wrap_seed(seed + i) for i in range(batch)])

    def __len__(self) -> int:
        return len(self.generators)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"noise has {len(self.generators)} generators but the latent batch is {x.shape[0]}")
        # Each row drawn straight into its slot of one batch (no stacking copy). For a CUDA latent the batch is
        # drawn in pinned memory and copied without blocking: a copy from pageable memory would wait for the GPU
        # to finish every queued step before the host could queue the next one.
        pin = x.device.type == "cuda"
        rows = torch.empty(x.shape, dtype=torch.float32, pin_memory=pin)
        for row, g in zip(rows, self.generators):
            torch.randn(x.shape[1:], generator=g, dtype=torch.float32, out=row)
        return rows.to(device=x.device, dtype=x.dtype, non_blocking=pin)


def derived_seeds(seed: int, count: int, stream: int = 0) -> list[int]:
    """``count`` well-separated 63-bit seeds from one user seed (numpy's SeedSequence), for a separate ``stream``
    of randomness that must not replay the numbers ``seed``, ``seed + 1``, ... already drive."""
    import numpy as np

    state = np.random.SeedSequence([int(seed) & (2**63 - 1), stream]).generate_state(count, dtype=np.uint64)
    return [int(s) >> 1 for s in state]
