"""Held-out evaluation: the mean reward of deterministic samples from fixed seeds, before and after training."""

from __future__ import annotations

from typing import Sequence

import torch

from ..sampling.noise import BranchNoise
from ..sampling.samplers import prior_latent, sample
from .policy import PolicyModel


@torch.no_grad()
def sample_rewards(
    policy: PolicyModel,
    reward,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    scale: float = 5.0,
    batch_size: int = 16,
) -> torch.Tensor:
    """Rewards [len(prompts) * len(seeds)] (prompt-major) of DDIM (eta = 0) samples, one start noise per seed."""
    if not prompts or not seeds:
        raise ValueError(f"prompts and seeds must be non-empty, got {len(prompts)} prompts and {len(seeds)} seeds")
    pairs = [(p, s) for p in prompts for s in seeds]
    scores = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        noise = BranchNoise([s for _, s in chunk]).randn_like(torch.empty((len(chunk),) + tuple(policy.latent_shape)))
        guided = policy.guided(policy.encode([p for p, _ in chunk]))
        x = prior_latent(guided, noise.to(policy.device), policy.sigmas[0])
        x0 = sample(guided, x, policy.sigmas, scale=scale).latent
        scores.append(torch.as_tensor(reward(policy.decode(x0).float(), [p for p, _ in chunk])).float().cpu())
    return torch.cat(scores)
