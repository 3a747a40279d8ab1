"""Round trips with the exact denoiser of Gaussian data, for every parametrisation.

With the optimal x0-predictor, deterministic DDIM and DDIM inversion are first-order discretisations of the same
probability-flow ODE, so sample -> invert returns to the start up to the discretisation error, which halves when
the step count doubles. Tolerances are relative L2 errors, measured (in float64) with a margin of about 1.5x.
"""

import pytest
import torch

from srrl_core.sampling import (
    ClassifierFreeGuidance,
    EpsilonPrediction,
    RectifiedFlow,
    VPrediction,
    flow_sigmas,
    invert,
    karras_sigmas,
    prior_latent,
    renoise,
    sample,
)
from tests.helpers.support import GaussianDenoiser, RawOutputModel


def schedule_for(param, steps):
    """Schedules ending just above sigma 0: the clean end of an invertible path."""
    if isinstance(param, RectifiedFlow):
        return torch.cat([flow_sigmas(steps)[:-1], torch.tensor([1e-3], dtype=torch.float64)])
    return karras_sigmas(0.02, 20.0, steps)[:-1]


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("param", [EpsilonPrediction(), VPrediction(), RectifiedFlow()], ids=lambda p: p.prediction_type)
def test_denoise_then_invert_round_trips(param):
    model = RawOutputModel(param)
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    noise = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    guided = ClassifierFreeGuidance(model, mean, torch.zeros(1, 4, 6, 6, dtype=torch.float64))
    errors = []
    for steps in (200, 400, 800):
        sigmas = schedule_for(param, steps)
        x_T = prior_latent(guided, noise, sigmas[0])
        x0 = sample(guided, x_T, sigmas, scale=1.0).latent
        errors.append(relative_error(invert(guided, x0, sigmas.flip(0), scale=1.0), x_T))
        # The clean end is a draw of the data: the class mean plus std-0.5 Gaussian detail.
        assert 0.3 < relative_error(x0, mean) < 0.7
    assert errors[-1] < {"flow": 0.025, "epsilon": 0.035, "v_prediction": 0.035}[param.prediction_type]
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.6 < coarse / fine < 2.4, errors  # first order: the error halves with twice the steps


@pytest.mark.parametrize("param", [EpsilonPrediction(), RectifiedFlow()], ids=lambda p: p.prediction_type)
@pytest.mark.parametrize("renoise_strength", [0.3, 0.6, 1.0])
def test_partial_renoise_then_denoise_reconstructs(param, renoise_strength):
    model = RawOutputModel(param)
    gen = torch.Generator().manual_seed(1)
    mean = torch.randn(1, 4, 6, 6, generator=gen, dtype=torch.float64)
    guided = ClassifierFreeGuidance(model, mean, torch.zeros_like(mean))
    sigmas = schedule_for(param, 300)
    x0 = sample(guided, prior_latent(guided, torch.randn(1, 4, 6, 6, generator=gen, dtype=torch.float64), sigmas[0]), sigmas, scale=1.0).latent
    renoised = renoise(guided, x0, sigmas, renoise_strength=renoise_strength, scale=1.0)
    assert renoised.sigmas[0] == sigmas[renoised.start_step]
    steps = sigmas.numel() - 1
    assert renoised.start_step == steps - round(renoise_strength * steps)
    again = sample(guided, renoised.latent, renoised.sigmas, scale=1.0).latent
    assert relative_error(again, x0) < 0.035 * renoise_strength  # measured 0.011 at 0.6, 0.023 at 1.0 (300 steps)
    if renoise_strength < 1:  # partial re-noising stays between the clean sample and pure noise
        assert relative_error(renoised.latent, x0) < relative_error(renoise(guided, x0, sigmas, renoise_strength=1.0, scale=1.0).latent, x0)


def test_classifier_free_guidance_is_one_batched_call_and_extrapolates():
    model = GaussianDenoiser(EpsilonPrediction())
    cond, uncond = torch.ones(2, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    guided = ClassifierFreeGuidance(model, cond, uncond)
    x, sigma = torch.randn(4, 1, 2, 2), torch.full((4,), 1.5)  # 2 prompts x 2 branches
    out = guided(x, sigma, 3.0)
    assert model.calls == 1
    pos = model(x, sigma, cond.repeat_interleave(2, 0))
    neg = model(x, sigma, uncond.expand(4, -1, -1, -1))
    assert torch.allclose(out, neg + 3.0 * (pos - neg), atol=1e-6)
