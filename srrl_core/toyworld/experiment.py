"""Measuring physical compliance of a policy on the toy world: a fixed held-out set, Wilson intervals, and the
exact McNemar test for paired before/after verdicts.

Shared by the main job (``python -m srrl_core.demo``) and the benchmark (``bench/bench_toyworld.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..sampling import BranchNoise, derived_seeds, prior_latent, reflective_sample
from ..training.mirror import mirror_prompt
from .scenes import FAMILIES, prompt_family, sample_prompts
from .verifiers import ToyPhysicsReward, compliance


@dataclass
class Evaluation:
    compliant: torch.Tensor  # [N] bool, one per (prompt, seed), prompt-major
    scores: torch.Tensor  # [N] the graded verifier reward of the chosen results
    images: torch.Tensor  # [N, H, W, 3] the chosen results
    round_images: list[torch.Tensor]  # per batch: every pass's candidates [passes * P * G, H, W, 3]
    model_calls: int

    @property
    def rate(self) -> float:
        return float(self.compliant.float().mean())

    def interval(self) -> tuple[float, float]:
        return wilson_interval(int(self.compliant.sum()), self.compliant.numel())


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def distinct_prompts(split: str, n: int, seed: int) -> list[str]:
    """``n`` distinct prompts of ``split``, the families in turn (balance, shadow, water, ...)."""
    pool = list(dict.fromkeys(sample_prompts(split, 40 * n, seed=seed)))
    by_family = {family: [p for p in pool if prompt_family(p) == family] for family in FAMILIES}
    out = [by_family[FAMILIES[i % len(FAMILIES)]][i // len(FAMILIES)] for i in range(n)]
    return out


def heldout_set(prompts: int = 96, seeds: int = 4, noise_seed: int | Sequence[int] = 0) -> tuple[list[str], list[int]]:
    """The held-out evaluation set: ``prompts`` distinct held-out prompts (always the same) x ``seeds`` noise
    seeds per block chosen by ``noise_seed`` (far from the seeds training draws; several blocks pool their seeds)."""
    return distinct_prompts("heldout", prompts, seed=1), noise_block(seeds, noise_seed)


def training_split_set(prompts: int = 96, seeds: int = 4, noise_seed: int | Sequence[int] = 0) -> tuple[list[str], list[int]]:
    """The same measurement on prompts that training draws from (``prompts`` distinct training-split prompts x the
    held-out set's noise seeds): reported apart, so that a gain that does not generalise shows."""
    return distinct_prompts("train", prompts, seed=1), noise_block(seeds, noise_seed)


def noise_block(seeds: int, noise_seed: int | Sequence[int]) -> list[int]:
    """``seeds`` noise seeds of block ``noise_seed`` (blocks start 1000 apart, from 10 000), or of each listed block
    in turn: one LoRA's compliance moves by up to 0.2 between blocks (docs/performance.md), so screens pool several."""
    blocks = [noise_seed] if isinstance(noise_seed, int) else list(noise_seed)
    if not blocks or len(set(blocks)) != len(blocks) or min(blocks) < 0:
        raise ValueError(f"noise_seed must be one block >= 0 or distinct blocks >= 0, got {noise_seed!r}")
    if not 1 <= seeds <= 1000:
        raise ValueError(f"seeds per noise block must be in [1, 1000] (blocks are 1000 apart), got {seeds}")
    return [10_000 + 1000 * block + i for block in blocks for i in range(seeds)]


def mcnemar_exact(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, float]:
    """(gained, lost, two-sided p) of the exact McNemar test on paired binary verdicts: under H0 each
    discordant pair is a gain or a loss with probability 1/2, so p = P(Binomial(g + l, 1/2) as extreme)."""
    before, after = before.bool().flatten(), after.bool().flatten()
    if before.shape != after.shape:
        raise ValueError(f"before and after must pair up, got {tuple(before.shape)} and {tuple(after.shape)}")
    gained, lost = int((~before & after).sum()), int((before & ~after).sum())
    n, k = gained + lost, min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return gained, lost, min(1.0, 2 * tail)


def mirrored(prompts: Sequence[str]) -> list[str]:
    """Each prompt's mirror image (left and right swapped), in order: evaluated on the same seeds, the second half of
    :func:`mirror_consistent`."""
    return [mirror_prompt(p) for p in prompts]


def mirror_consistent(evaluation: "Evaluation", mirror: "Evaluation") -> torch.Tensor:
    """[N] bool: each (prompt, seed) passes under its prompt and, from the same noise, under its mirror image.

    A side prior (one side drawn whatever the prompt says) passes at most one of a prompt and its mirror image, so
    this counts only compliance that reads the side the prompt names; plain compliance cannot tell the two apart."""
    if evaluation.compliant.shape != mirror.compliant.shape:
        raise ValueError(f"the mirror evaluation must pair up with the original, got {tuple(mirror.compliant.shape)} "
                         f"and {tuple(evaluation.compliant.shape)} verdicts")
    return evaluation.compliant & mirror.compliant


def per_family(evaluation: "Evaluation | torch.Tensor", prompts: Sequence[str]) -> dict[str, float]:
    """Compliance per family of a prompt-major evaluation of ``prompts`` (or of its [N] verdicts)."""
    verdicts = evaluation if isinstance(evaluation, torch.Tensor) else evaluation.compliant
    per_prompt = verdicts.numel() // len(prompts)
    families = [prompt_family(p) for p in prompts for _ in range(per_prompt)]
    return {f: float(verdicts[[i for i, g in enumerate(families) if g == f]].float().mean())
            for f in FAMILIES if f in families}


@torch.no_grad()
def evaluate(
    policy,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    rounds: int = 0,
    branches: int = 1,
    scale: float = 4.0,
    renoise_strength: float = 1.0,
    eta: float = 0.0,
    batch_size: int = 32,
) -> Evaluation:
    """Compliance of every (prompt, seed): plain DDIM when ``rounds`` = 0, else reward-driven reflection (best
    candidate of all rounds, judged by the graded verifier reward)."""
    reward = ToyPhysicsReward()
    pairs = [(p, s) for p in prompts for s in seeds]
    chosen, candidates, calls = [], [], 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        chunk_prompts = [p for p, _ in chunk]
        rows = [s for _, s in chunk for _ in range(branches)]
        noise = BranchNoise([seed * 1000 + g for seed in (s for _, s in chunk) for g in range(branches)])
        x = noise.randn_like(torch.empty((len(rows),) + tuple(policy.latent_shape))).to(policy.device)
        guided = policy.guided(policy.encode(chunk_prompts))
        row_prompts = [p for p in chunk_prompts for _ in range(branches)]
        score = (lambda latents: reward(policy.decode(latents).float(), row_prompts)) if rounds or branches > 1 else None
        result = reflective_sample(
            guided, prior_latent(guided, x, policy.sigmas[0]), policy.sigmas, rounds=rounds, branches=branches,
            scale=scale, eta=eta, renoise_strength=renoise_strength, score_fn=score, selection="best" if score else "last",
            noise=BranchNoise(derived_seeds(start, len(rows), stream=1)) if eta > 0 else None,
        )  # fmt: skip
        chosen.append(policy.decode(result.latent).float().cpu())
        candidates.append(policy.decode(result.all_latents).float().cpu())
        calls += result.model_calls
    images = torch.cat(chosen)
    pair_prompts = [p for p, _ in pairs]
    return Evaluation(compliance(images, pair_prompts).bool(), reward(images, pair_prompts).float(), images, candidates, calls)
