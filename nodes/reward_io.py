"""How nodes feed rewards: prompt lists from a text box, and latents -> decoded images -> scores."""

from __future__ import annotations

import torch


def split_prompts(text: str, count: int, name: str) -> list[str]:
    """One prompt per line: either one line for all ``count`` items or exactly ``count`` lines."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{name}: give the text the reward judges against (one line, or one line per latent)")
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise ValueError(f"{name}: has {len(lines)} lines; give 1 line or exactly {count} (one per latent)")
    return lines


def latent_scorer(model, vae, reward, prompts: list[str]):
    """score_fn for the engine: model-space latents -> the host VAE's images -> reward scores."""

    def score(latents: torch.Tensor) -> torch.Tensor:
        images = vae.decode(model.model.process_latent_out(latents.float()))
        images = images.reshape((-1,) + images.shape[-3:])  # video VAEs add a frame axis
        return reward.score(images.float().clamp(0, 1).cpu(), prompts)

    return score
