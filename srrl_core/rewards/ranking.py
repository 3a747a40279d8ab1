"""Scoring a batch for display: scores, best-first order and a text report."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Reward


@dataclass
class Ranking:
    scores: torch.Tensor   # [B], in batch order
    order: torch.Tensor    # [B] batch indices, best score first
    prompts: list[str]
    reward_name: str

    def report(self) -> str:
        """One line per image, best first: rank, batch index, score, prompt."""
        lines = [f"{self.reward_name}: {len(self.prompts)} image(s), best first "
                 f"(mean {self.scores.mean():.4f}, min {self.scores.min():.4f}, max {self.scores.max():.4f})"]
        for rank, index in enumerate(self.order.tolist(), 1):
            lines.append(f"#{rank}  image {index}  score {self.scores[index]:.4f}  {self.prompts[index]}")
        return "\n".join(lines)


def rank(reward: Reward, images: torch.Tensor, prompts) -> Ranking:
    """Score ``images`` against ``prompts`` and order them best first (ties keep batch order)."""
    scores = reward.score(images, prompts)
    prompts = [prompts] * len(scores) if isinstance(prompts, str) else list(prompts)
    prompts = prompts * len(scores) if len(prompts) == 1 else prompts
    order = torch.sort(scores, descending=True, stable=True).indices
    return Ranking(scores, order, prompts, getattr(reward, "name", type(reward).__name__))
