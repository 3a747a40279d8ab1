"""The one interface every reward implements.

A reward judges clean images against their prompts:

    score(images, prompts) -> Tensor[B]   (float32, on the CPU)

``images`` is a float tensor [B, H, W, C] with values in [0, 1] (ComfyUI's IMAGE layout, C = 3);
``prompts`` holds one string per image, or a single string shared by the batch. Backends implement
``_score`` on validated inputs and are free to batch, cache their model and pick their own dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch


class Reward(ABC):
    """Base class: validates inputs once so every backend sees the same, well-formed batch."""

    #: Short name used in reports and registries.
    name: str = "reward"
    #: Called (no arguments) while a backend waits on something slow, such as a network request; it raises to
    #: abandon the work. Hosts pass their Cancel check here (the ComfyUI nodes do), so srrl_core needs no host.
    interrupt_check: Callable[[], None] | None = None

    def set_interrupt_check(self, check: Callable[[], None] | None) -> Reward:
        self.interrupt_check = check
        return self

    def score(self, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        images = validate_images(images)
        prompts = validate_prompts(prompts, images.shape[0])
        scores = self._score(images, prompts)
        if scores.shape != (images.shape[0],):
            raise RuntimeError(f"{type(self).__name__} returned scores of shape {tuple(scores.shape)}, expected ({images.shape[0]},)")
        return scores.detach().float().cpu()

    __call__ = score

    @abstractmethod
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores for validated images [B, H, W, 3] in [0, 1] and exactly B prompts."""


def validate_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor [B, H, W, 3] with values in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point with values in [0, 1], got dtype {images.dtype}")
    if images.shape[0] < 1:
        raise ValueError("images must hold at least one image (B >= 1)")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values; expected values in [0, 1]")
    low, high = images.min().item(), images.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"images must have values in [0, 1], got range [{low:.3f}, {high:.3f}]")
    return images.clamp(0, 1)


def validate_prompts(prompts, batch: int) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts] * batch
    prompts = list(prompts)
    if len(prompts) == 1 and batch > 1:
        prompts = prompts * batch
    if len(prompts) != batch:
        raise ValueError(f"prompts must hold 1 or {batch} strings (one per image), got {len(prompts)}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompts[{i}] must be a non-empty string, got {prompt!r}")
    return prompts
