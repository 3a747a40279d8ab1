"""The condition-guided forward process: carry a clean result back toward noise, guided by the prompt.

SRRL re-noises each round's clean image with DDIM inversion under classifier-free guidance at a small scale
w_b (reference default 0.1) so the next round starts from a noise that still encodes the previous attempt.
``renoise_strength`` in [0, 1] chooses how far back: 1 inverts the whole schedule (the reference), smaller values
invert only the last ``round(renoise_strength * steps)`` steps and leave the rest of the schedule to denoise — the
same fraction of model calls saved on both the inversion and the next denoising pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_float, check_sigmas
from .guidance import GuidedDenoiser
from .samplers import OnStep, invert


@dataclass
class Renoised:
    latent: torch.Tensor  # state at sigmas[0]
    sigmas: torch.Tensor  # the rest of the descending schedule, starting at the latent's level
    start_step: int  # index into the full schedule where denoising resumes


def renoise_start(num_steps: int, renoise_strength: float) -> int:
    """The schedule index denoising resumes at: ``num_steps - round(renoise_strength * num_steps)``."""
    renoise_strength = check_float("renoise_strength", renoise_strength, 0.0, 1.0)
    return num_steps - round(renoise_strength * num_steps)


def renoise(
    guided: GuidedDenoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    renoise_strength: float,
    scale: float,
    on_step: OnStep = None,
) -> Renoised:
    """Invert clean ``x0`` (at ``sigmas[-1]``) up the descending schedule ``sigmas`` by ``renoise_strength``."""
    check_sigmas("sigmas", sigmas)
    start = renoise_start(sigmas.numel() - 1, renoise_strength)
    rest = sigmas[start:]
    if rest.numel() < 2:
        return Renoised(x0, rest, start)
    return Renoised(invert(guided, x0, rest.flip(0), scale=scale, on_step=on_step), rest, start)
