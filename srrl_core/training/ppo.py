r"""The PPO-clipped objective on DDIM transitions (Schulman et al., 2017; DDPO, Black et al., 2023).

For a recorded transition :math:`x_t \to x_{t-1}` with log-probability :math:`\log p_{old}` under the rollout policy
and a recomputed :math:`\log p_\theta` (both Gaussian, mean over latent elements):

.. math::
    \rho = \exp(\log p_\theta - \log p_{old}),\qquad
    \hat A = \beta_{\pm}\,\mathrm{clip}(A, -c_A, c_A),\qquad
    \ell = \max\big(-\hat A\rho,\ -\hat A\,\mathrm{clip}(\rho, 1 - \epsilon, 1 + \epsilon)\big)

with :math:`\beta_+` for :math:`A > 0` and :math:`\beta_-` otherwise (reference: 1, 1; :math:`c_A = 5`,
:math:`\epsilon = 0.1`). The optional KL penalty to the frozen base model compares the two Gaussian transitions,
which share the variance :math:`\varsigma^2`:

.. math::  \mathrm{KL}\big(\mathcal N(\mu_\theta, \varsigma^2 I)\,\|\,\mathcal N(\mu_{ref}, \varsigma^2 I)\big) / d
           = \frac{\lVert\mu_\theta - \mu_{ref}\rVert^2}{2\varsigma^2 d}

(the mean over the d latent elements, matching the log-probabilities' convention).
"""

from __future__ import annotations

import torch

from ..sampling.ddim import ddim_mean, transition_std
from ..sampling.parametrization import Parametrization


def clip_advantages(advantages: torch.Tensor, clip: float = 5.0, beta_positive: float = 1.0, beta_negative: float = 1.0) -> torch.Tensor:
    """:math:`\\beta_\\pm\\,\\mathrm{clip}(A, -c, c)`."""
    clipped = advantages.clamp(-clip, clip)
    return clipped * torch.where(clipped > 0, beta_positive, beta_negative).to(clipped.dtype)


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-transition clipped surrogate loss [B] and the ratio [B]; ``advantages`` already clipped and weighted."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


def transition_kl(
    param: Parametrization,
    x: torch.Tensor,
    denoised: torch.Tensor,
    reference: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    """KL [B] (mean over elements) between the DDIM transitions implied by two clean predictions."""
    std = transition_std(param, sigma, sigma_next, eta)
    mean = ddim_mean(param, x, denoised, sigma, sigma_next, std)
    mean_ref = ddim_mean(param, x, reference, sigma, sigma_next, std)
    sq = (mean - mean_ref).pow(2).mean(dim=tuple(range(1, x.ndim)))
    return sq / (2 * std.pow(2))


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """DDPO's estimate 0.5 (log p - log p_old)^2, per transition."""
    return 0.5 * (log_prob - old_log_prob).pow(2)
