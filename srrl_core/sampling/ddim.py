r"""DDIM (Song et al., 2021) in a parametrisation's state space, forward and inverted.

From state :math:`x` at level :math:`\sigma` with clean estimate :math:`\hat x_0` and implied noise
:math:`\hat\epsilon = (x - \alpha\hat x_0)/s`, one step to level :math:`\sigma'` is

.. math::
    x' = \alpha'\hat x_0 + \sqrt{s'^2 - \varsigma^2}\,\hat\epsilon + \varsigma z,\qquad
    \varsigma = \eta\, s' \sqrt{1 - \Big(\frac{\alpha\, s'}{\alpha'\, s}\Big)^2},\qquad z\sim\mathcal N(0, I).

For a variance-preserving model in the diffusers frame this is exactly ``DDIMScheduler.step`` (its
:math:`\sigma_t(\eta)` is :math:`\varsigma` scaled by :math:`\sqrt{\bar\alpha'}`); :math:`\eta = 1` is the DDPM
posterior. The transition is Gaussian, :math:`x' \sim \mathcal N(\mu, \varsigma^2 I)`, and its log-probability is
reported as the **mean** over latent elements, as the SRRL / DDPO reference code computes it.

Inversion (the condition-guided forward process) runs the deterministic step the other way: given the noise
prediction :math:`\hat\epsilon` made at the destination level, :math:`\hat x_0 = (x - s\hat\epsilon)/\alpha` and
:math:`x' = \alpha'\hat x_0 + s'\hat\epsilon` — diffusers' ``DDIMInverseScheduler.step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .parametrization import Parametrization, append_dims


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x at the next (lower) level
    mean: torch.Tensor  # mu of the Gaussian transition
    std: torch.Tensor  # varsigma per sample, [B]
    log_prob: torch.Tensor | None  # [B], mean over elements; None when the step is deterministic


def transition_std(param: Parametrization, sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> torch.Tensor:
    """The DDIM noise scale varsigma for a step sigma -> sigma_next (both [B] or scalars)."""
    if eta == 0:
        return torch.zeros_like(sigma_next)
    std, std_next = param.std(sigma), param.std(sigma_next)
    ratio = param.times_alpha(sigma, std_next) / param.times_alpha(sigma_next, std)
    return eta * std_next * (1 - ratio**2).clamp(min=0).sqrt()


def ddim_mean(param, x, denoised, sigma, sigma_next, step_std) -> torch.Tensor:
    s, s_next, v = (append_dims(t, x.ndim) for t in (sigma, sigma_next, step_std))
    eps = param.noise_from(x, denoised, s)
    direction = (param.std(s_next) ** 2 - v**2).clamp(min=0).sqrt()
    return param.times_alpha(s_next, denoised) + direction * eps


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(sample; mean, std^2 I), averaged over all but the batch dimension."""
    std = append_dims(std, sample.ndim).to(sample.dtype)
    log_density = -((sample - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, sample.ndim)))


def ddim_step(
    param: Parametrization,
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    log_prob: bool = True,
) -> StepOutput:
    """One DDIM step. ``sigma``/``sigma_next`` are [B]; ``noise`` (unit Gaussian like ``x``) is needed when eta > 0.
    A step onto sigma_next = 0 leaves nothing random: take it with eta = 0 (the variance would be 0).
    ``log_prob=False`` skips the transition's log-probability (``None`` in the output) when nobody records it."""
    step_std = transition_std(param, sigma, sigma_next, eta)
    mean = ddim_mean(param, x, denoised, sigma, sigma_next, step_std)
    if eta == 0:
        return StepOutput(mean, mean, step_std, None)
    if noise is None:
        raise ValueError("noise is required for a stochastic DDIM step (eta > 0)")
    prev_sample = mean + append_dims(step_std, x.ndim) * noise
    return StepOutput(prev_sample, mean, step_std, gaussian_log_prob(prev_sample, mean, step_std) if log_prob else None)


def ddim_log_prob(
    param: Parametrization,
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    prev_sample: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    """Log-probability [B] of a *given* next latent under the DDIM transition; differentiable in ``denoised``."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a transition log-probability, got {eta}")
    step_std = transition_std(param, sigma, sigma_next, eta)
    mean = ddim_mean(param, x, denoised, sigma, sigma_next, step_std)
    return gaussian_log_prob(prev_sample, mean, step_std)


def ddim_inversion_step(
    param: Parametrization, x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """Move ``x`` from ``sigma`` up to ``sigma_next`` > sigma along the predicted noise ``eps``."""
    s, s_next = append_dims(sigma, x.ndim), append_dims(sigma_next, x.ndim)
    x0 = param.over_alpha(s, x - param.std(s) * eps)
    return param.times_alpha(s_next, x0) + param.std(s_next) * eps
