"""Sampling loops as pure functions of (guided denoiser, x, sigmas), in the style of k-diffusion.

``sample`` walks a descending schedule with DDIM (optionally stochastic, recording the trajectory that PPO needs);
``invert`` walks an ascending schedule with DDIM inversion. Both call the model exactly once per step and call
``on_step()`` after each model call, which is where progress bars advance and cancellation is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..validation import check_finite, check_float, check_sigmas
from .ddim import ddim_inversion_step, ddim_step
from .guidance import GuidedDenoiser
from .noise import BranchNoise

OnStep = Callable[[], None] | None


@dataclass
class Trajectory:
    """A recorded denoising trajectory of S steps over a batch of B rows."""

    latents: torch.Tensor  # [S, B, ...] state before each step
    next_latents: torch.Tensor  # [S, B, ...] state after each step
    sigmas: torch.Tensor  # [S] level before each step
    next_sigmas: torch.Tensor  # [S] level after each step
    log_probs: torch.Tensor  # [S, B] mean-over-elements log-probability (0 for deterministic steps)
    scale: float  # CFG scale the rollout used
    eta: float

    @property
    def num_steps(self) -> int:
        return self.sigmas.shape[0]


@dataclass
class SampleOutput:
    latent: torch.Tensor  # state at the last level of the schedule
    trajectory: Trajectory | None


def step_levels(levels: torch.Tensor, index: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma, sigma_next) for step ``index`` as [batch] tensors (``levels`` already on the latent's device)."""
    return levels[index].expand(batch), levels[index + 1].expand(batch)


def sample(
    guided: GuidedDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    scale: float,
    eta: float = 0.0,
    noise: BranchNoise | None = None,
    record: bool = False,
    on_step: OnStep = None,
) -> SampleOutput:
    """DDIM from ``x`` at ``sigmas[0]`` down to ``sigmas[-1]``; stochastic when ``eta`` > 0 (needs ``noise``)."""
    check_sigmas("sigmas", sigmas)
    check_finite("latent", x)
    eta = check_float("eta", eta, 0.0)
    if eta > 0 and noise is None:
        raise ValueError("noise (a BranchNoise with one generator per latent row) is required when eta > 0")
    param, batch = guided.parametrization, x.shape[0]
    levels = sigmas.to(device=x.device, dtype=torch.float32)  # one copy: no host-device sync per step
    random = (sigmas[1:] > 0).tolist()  # onto sigma 0 nothing random is left; asked once, not per step
    steps = []
    for i in range(sigmas.numel() - 1):
        sigma, sigma_next = step_levels(levels, i, batch)
        denoised = guided(x, sigma, scale)
        if on_step is not None:
            on_step()
        z = noise.randn_like(x) if eta > 0 else None
        step_eta = eta if random[i] else 0.0
        out = ddim_step(param, x, denoised, sigma, sigma_next, step_eta, z, log_prob=record)
        x_next = out.prev_sample.to(x.dtype)
        if record:
            log_prob = out.log_prob if out.log_prob is not None else torch.zeros(batch, device=x.device)
            steps.append((x, x_next, sigma[0], sigma_next[0], log_prob))
        x = x_next
    trajectory = None
    if record:
        latents, next_latents, levels, next_levels, log_probs = (torch.stack(t) for t in zip(*steps))
        trajectory = Trajectory(latents, next_latents, levels, next_levels, log_probs, scale, eta)
    return SampleOutput(x, trajectory)


def invert(
    guided: GuidedDenoiser, x: torch.Tensor, sigmas: torch.Tensor, *, scale: float, on_step: OnStep = None
) -> torch.Tensor:
    """DDIM inversion from ``x`` at ``sigmas[0]`` up to ``sigmas[-1]`` (an ascending schedule).

    Like diffusers' ``DDIMInverseScheduler``, each step asks the model at the *destination* level: the start
    of the path is (nearly) clean, where the noise is not identifiable from x.
    """
    check_sigmas("sigmas (reversed)", sigmas.flip(0))
    check_finite("latent", x)
    param, batch = guided.parametrization, x.shape[0]
    levels = sigmas.to(device=x.device, dtype=torch.float32)
    for i in range(sigmas.numel() - 1):
        sigma, sigma_next = step_levels(levels, i, batch)
        denoised = guided(x, sigma_next, scale)
        if on_step is not None:
            on_step()
        eps = param.noise_from(x, denoised, sigma_next.reshape((batch,) + (1,) * (x.ndim - 1)))
        x = ddim_inversion_step(param, x, eps, sigma, sigma_next).to(x.dtype)
    return x


def prior_latent(guided: GuidedDenoiser, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """The starting state at ``sigma`` for unit Gaussian ``noise``, as a pipeline starts from pure noise.

    It is the state of a data point with unit variance: x = noise * sqrt(alpha^2 + std^2) — for VP models
    noise * sqrt(1 + sigma^2) (diffusers' start; ComfyUI's "max denoise"), for flow models at sigma = 1, noise.
    """
    param = guided.parametrization
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=noise.device)
    return (noise * (param.alpha(sigma) ** 2 + param.std(sigma) ** 2).sqrt()).to(noise.dtype)
