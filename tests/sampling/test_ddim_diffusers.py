"""The engine's DDIM against diffusers' schedulers (the oracle), converting between frames exactly.

The engine's VP state is the diffusers latent divided by sqrt(alpha_bar). Tolerance: max abs diff <= 1e-5 (fp32).
"""

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from srrl_core.adapters.diffusers_unet import DiffusersDenoiser, TextConditioning
from srrl_core.sampling import (
    BranchNoise,
    ClassifierFreeGuidance,
    EpsilonPrediction,
    VPSchedule,
    ddim_inversion_step,
    ddim_log_prob,
    ddim_sigmas,
    ddim_step,
    prior_latent,
    sample,
)
from tests.helpers.support import SD_SCHEDULER_CONFIG, tiny_unet

TOL = 1e-5
STEPS = 20


def vp_scale(schedule: VPSchedule, sigma: torch.Tensor) -> torch.Tensor:
    """sqrt(alpha_bar) for a sigma: diffusers latent = engine state * this."""
    return (1 / (1 + sigma.double() ** 2)).sqrt().float()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers(eta):
    scheduler = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(STEPS)
    schedule = VPSchedule.from_diffusers(SD_SCHEDULER_CONFIG)
    sigmas, timesteps = ddim_sigmas(SD_SCHEDULER_CONFIG, STEPS)
    assert torch.equal(timesteps, scheduler.timesteps)
    param = EpsilonPrediction()
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(timesteps.tolist()):
        sample_vp = torch.randn(2, 4, 8, 8, generator=gen)
        eps = torch.randn(2, 4, 8, 8, generator=gen)
        z = torch.randn(2, 4, 8, 8, generator=gen)
        expected = scheduler.step(eps, t, sample_vp, eta=eta, variance_noise=z).prev_sample

        s, s_next = sigmas[i].float().expand(2), sigmas[i + 1].float().expand(2)
        x = sample_vp / vp_scale(schedule, sigmas[i])
        out = ddim_step(param, x, x - sigmas[i].float() * eps, s, s_next, eta=eta, noise=z)
        got = out.prev_sample * vp_scale(schedule, sigmas[i + 1])
        assert (got - expected).abs().max() <= TOL, f"step {i} (t={t})"


def test_log_prob_is_the_gaussian_density():
    param = EpsilonPrediction()
    gen = torch.Generator().manual_seed(1)
    x, denoised, z = (torch.randn(3, 4, 8, 8, generator=gen) for _ in range(3))
    s, s_next = torch.full((3,), 2.0), torch.full((3,), 1.2)
    out = ddim_step(param, x, denoised, s, s_next, eta=1.0, noise=z)
    std = out.std.reshape(3, 1, 1, 1)
    direct = torch.distributions.Normal(out.mean, std).log_prob(out.prev_sample).mean(dim=(1, 2, 3))
    assert torch.allclose(out.log_prob, direct, atol=1e-5)
    # Evaluating a given next latent gives the same value, and it is differentiable in the prediction.
    denoised.requires_grad_(True)
    again = ddim_log_prob(param, x, denoised, s, s_next, out.prev_sample, eta=1.0)
    assert torch.allclose(again, direct, atol=1e-5)
    again.sum().backward()
    assert denoised.grad is not None and denoised.grad.abs().sum() > 0


def test_inversion_step_matches_ddim_inverse_scheduler():
    inverse = DDIMInverseScheduler.from_config(SD_SCHEDULER_CONFIG)
    inverse.set_timesteps(STEPS)
    schedule = VPSchedule.from_diffusers(SD_SCHEDULER_CONFIG)
    sigmas, _ = ddim_sigmas(SD_SCHEDULER_CONFIG, STEPS)
    ascending = sigmas.flip(0)
    param = EpsilonPrediction()
    gen = torch.Generator().manual_seed(2)
    assert len(inverse.timesteps) == STEPS
    for i, t in enumerate(inverse.timesteps.tolist()):
        sample_vp = torch.randn(2, 4, 8, 8, generator=gen)
        eps = torch.randn(2, 4, 8, 8, generator=gen)
        expected = inverse.step(eps, t, sample_vp).prev_sample
        x = sample_vp / vp_scale(schedule, ascending[i])
        s, s_next = ascending[i].float().expand(2), ascending[i + 1].float().expand(2)
        got = ddim_inversion_step(param, x, eps, s, s_next) * vp_scale(schedule, ascending[i + 1])
        assert (got - expected).abs().max() <= TOL, f"inverse step {i} (t={t})"


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_loop_matches_a_diffusers_ddim_loop_on_a_tiny_unet(eta):
    unet = tiny_unet(seed=0)
    denoiser = DiffusersDenoiser(unet, SD_SCHEDULER_CONFIG)
    gen = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(2, 5, 32, generator=gen), torch.randn(1, 5, 32, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    scale = 4.0

    scheduler = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(STEPS)
    branch = BranchNoise([10, 11])
    latents = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            both = unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([cond, uncond.expand(2, -1, -1)])).sample
            pos, neg = both.chunk(2)
            z = branch.randn_like(latents) if eta else None
            latents = scheduler.step(neg + scale * (pos - neg), t, latents, eta=eta, variance_noise=z).prev_sample

        guided = ClassifierFreeGuidance(denoiser, TextConditioning(cond), TextConditioning(uncond))
        sigmas, _ = ddim_sigmas(SD_SCHEDULER_CONFIG, STEPS)
        x = prior_latent(guided, noise, sigmas[0])
        out = sample(guided, x, sigmas, scale=scale, eta=eta, noise=BranchNoise([10, 11]))
    schedule = VPSchedule.from_diffusers(SD_SCHEDULER_CONFIG)
    got = out.latent * vp_scale(schedule, sigmas[-1])
    assert (got - latents).abs().max() <= 1e-4
