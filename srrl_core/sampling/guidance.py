r"""Classifier-free guidance (Ho & Salimans, 2022) on the clean-sample prediction:

.. math::  \hat x_0 = \hat x_0(x, \varnothing) + w\,\big(\hat x_0(x, c) - \hat x_0(x, \varnothing)\big)

which equals guidance on the noise prediction (the map between the two is affine in the output). Conditional and
unconditional branches run in **one** batched model call; w = 1 and w = 0 need only one of them.

Conditioning may be a tensor [B, ...] or any object with ``batch_size``, ``repeat_interleave(n)`` and
``concat(other)`` (see :class:`srrl_core.adapters.diffusers_unet.TextConditioning`). A conditioning batch of P
serves a latent batch of P * G (G branches per prompt, rows prompt-major).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from .parametrization import Parametrization

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (x, sigma [B], cond) -> x0


class GuidedDenoiser(Protocol):
    parametrization: Parametrization

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, scale: float) -> torch.Tensor:
        """Guided clean-sample prediction for state ``x`` at noise levels ``sigma`` [B]."""


class ClassifierFreeGuidance:
    """A guided denoiser built from a conditional denoiser ``denoiser(x, sigma, cond) -> x0``."""

    def __init__(self, denoiser: Denoiser, positive, negative, parametrization: Parametrization | None = None):
        self.denoiser = denoiser
        self.positive = positive
        self.negative = negative
        self.parametrization = parametrization or denoiser.parametrization
        if batch_size(negative) not in (1, batch_size(positive)):
            raise ValueError(
                f"negative conditioning batch must be 1 or match positive ({batch_size(positive)}), got {batch_size(negative)}"
            )

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, scale: float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        if scale == 1:
            return self.denoiser(x, sigma, expand(self.positive, x.shape[0], "positive"))
        if scale == 0:
            return self.denoiser(x, sigma, expand(self.negative, x.shape[0], "negative"))
        cond = concat(expand(self.positive, x.shape[0], "positive"), expand(self.negative, x.shape[0], "negative"))
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cond)
        positive, negative = both.chunk(2)
        return negative + scale * (positive - negative)


def batch_size(cond) -> int:
    return cond.shape[0] if isinstance(cond, torch.Tensor) else cond.batch_size


def expand(cond, batch: int, name: str):
    """Repeat each conditioning row so a batch of P prompts covers ``batch`` = P * G latent rows."""
    size = batch_size(cond)
    if size == batch:
        return cond
    if size < 1 or batch % size:
        raise ValueError(f"{name} conditioning batch ({size}) must divide the latent batch ({batch})")
    return cond.repeat_interleave(batch // size, dim=0) if isinstance(cond, torch.Tensor) else cond.repeat_interleave(batch // size)


def concat(first, second):
    return torch.cat([first, second]) if isinstance(first, torch.Tensor) else first.concat(second)
