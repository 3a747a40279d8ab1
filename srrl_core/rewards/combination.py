"""Weighted combination of rewards: score_i = sum_k w_k * r_k(x_i, c_i).

Rewards live on different scales (CLIP cosine ~0.3, PickScore ~20, verifiers in [0, 1]), so choose the
weights with that in mind, or let the trainer normalise per prompt (srrl_core/training/advantages.py). Negative weights turn a
reward into a penalty.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..validation import check_float
from .base import Reward


class WeightedSum(Reward):
    name = "weighted_sum"

    def __init__(self, terms: Sequence[tuple[Reward, float]]):
        terms = list(terms)
        if not terms:
            raise ValueError("terms must hold at least one (reward, weight) pair")
        for i, term in enumerate(terms):
            if not (isinstance(term, (tuple, list)) and len(term) == 2 and isinstance(term[0], Reward)):
                raise ValueError(f"terms[{i}] must be a (Reward, weight) pair, got {term!r}")
        self.terms = [(reward, check_float(f"terms[{i}] weight", weight)) for i, (reward, weight) in enumerate(terms)]

    def set_interrupt_check(self, check) -> WeightedSum:
        self.interrupt_check = check
        for reward, _ in self.terms:
            reward.set_interrupt_check(check)
        return self

    def components(self, images: torch.Tensor, prompts) -> dict[str, torch.Tensor]:
        """Each term's unweighted scores, keyed '<index>:<name>' (for reports)."""
        return {f"{i}:{reward.name}": reward.score(images, prompts) for i, (reward, _) in enumerate(self.terms)}

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        total = torch.zeros(images.shape[0])
        for reward, weight in self.terms:
            total += weight * reward.score(images, prompts)
        return total
