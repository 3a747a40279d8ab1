r"""The stochastic (eta = 1) DDIM rollout keeps the marginals, for eps, v and rectified flow.

Data: every element is i.i.d. :math:`x_0 \sim \mathcal N(\mu, S^2)`, so the marginal at level sigma is
:math:`\mathcal N(\alpha\mu, \alpha^2 S^2 + s^2)` with (alpha, s) = (1, sigma) for VP and (1 - sigma, sigma) for flow.

Three claims, each tested on its own:

1. **The transition is the DDPM posterior.** At eta = 1 the step equals
   :math:`q(x_{\sigma'} | x_\sigma, x_0)` of the Markov forward process with
   :math:`\alpha_{t|s} = \alpha/\alpha'`, :math:`\sigma_{t|s}^2 = s^2 - \alpha_{t|s}^2 s'^2` (Kingma et al. 2021,
   eq. 27-28, written out here independently of srrl_core), and its log-probability is that Gaussian's density.
2. **Marginals are kept exactly given x0** (Song et al. 2021, lemma 1): stepping with the true x0 from
   :math:`x_{\sigma_0} \sim q(\cdot | x_0)` gives :math:`x_{\sigma_i} \sim \mathcal N(\alpha_i x_0, s_i^2)` at every
   level, for any step count. Monte-Carlo moments must match the analytic marginal.
3. **With the exact (Bayes) denoiser** :math:`E[x_0 | x]` the mean is kept exactly at every step (all maps are
   linear and unbiased), while the variance falls short of the marginal by a discretisation error (plugging in
   the posterior mean drops :math:`\mathrm{Var}(x_0|x)`), which the closed-form recursion of the chain predicts and
   which halves when the step count doubles (first order). The sampled variance must match that recursion.

Tolerances: n independent Gaussian samples give a sample mean with standard error sqrt(V/n) and a sample variance
with standard error V sqrt(2/(n-1)); every check allows 5 of them (a false failure has probability < 1e-6 per check;
the seeds are fixed anyway).
"""

import itertools
import math

import pytest
import torch

from srrl_core.sampling import (
    EpsilonPrediction,
    RectifiedFlow,
    VPrediction,
    ddim_log_prob,
    ddim_sigmas,
    ddim_step,
    flow_sigmas,
)
from srrl_core.sampling.ddim import transition_std
from srrl_core.training.models import SD_SCHEDULER_CONFIG
from tests.helpers.support import RawOutputModel

MU, DATA_STD = 0.7, 0.5
CHAINS, SHAPE = 20000, (1, 2, 2)  # 80000 independent elements: every element is its own 1-D chain
PARAMS = [EpsilonPrediction(), VPrediction(), RectifiedFlow()]


def schedule(param, steps, shift=1.0):
    """The schedules the trainer uses: diffusers' DDIM spacing for SD1.x (ends at sigma 0.029, every step
    stochastic) and the flow schedule (ends at 0, the last step deterministic)."""
    if isinstance(param, RectifiedFlow):
        return flow_sigmas(steps, shift)
    return ddim_sigmas(SD_SCHEDULER_CONFIG, steps)[0]


def coefficients(param, sigma, sigma_next):
    """(alpha, s, alpha', s') as float64 scalars."""
    sigma, sigma_next = torch.as_tensor(sigma, dtype=torch.float64), torch.as_tensor(sigma_next, dtype=torch.float64)
    return param.alpha(sigma), param.std(sigma), param.alpha(sigma_next), param.std(sigma_next)


def ddpm_posterior(param, x, x0, sigma, sigma_next):
    """Mean and std of q(x_s | x_t, x0) for the Markov forward process x_t = a_ts x_s + sigma_ts z."""
    a, s, a_next, s_next = coefficients(param, sigma, sigma_next)
    a_ts = a / a_next
    var_ts = s**2 - a_ts**2 * s_next**2
    mean = a_ts * s_next**2 / s**2 * x + a_next * var_ts / s**2 * x0
    return mean, (var_ts * s_next**2 / s**2).sqrt()


def assert_moments(samples, mean, var, what):
    n = samples.numel()
    mean_se, var_se = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
    got_mean, got_var = samples.mean().item(), samples.var().item()
    assert abs(got_mean - mean) < 5 * mean_se, f"{what}: mean {got_mean:.5f} vs {mean:.5f} (SE {mean_se:.2e})"
    assert abs(got_var - var) < 5 * var_se, f"{what}: variance {got_var:.5f} vs {var:.5f} (SE {var_se:.2e})"


def marginal(param, sigma):
    a, s, _, _ = coefficients(param, sigma, sigma)
    return (a * MU).item(), (a**2 * DATA_STD**2 + s**2).item()


def step_sigmas(sigmas, i):
    return sigmas[i].expand(CHAINS), sigmas[i + 1].expand(CHAINS)


# 1. the transition ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.prediction_type)
def test_eta_one_step_is_the_ddpm_posterior_and_its_log_prob_is_its_density(param):
    gen = torch.Generator().manual_seed(0)
    pairs = [(1.0, 0.95), (0.6, 0.5), (0.1, 0.02)] if isinstance(param, RectifiedFlow) else [(14.6, 10.0), (1.0, 0.7), (0.1, 0.03)]
    for sigma, sigma_next in pairs:
        x, x0, z = (torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64) for _ in range(3))
        sig, sig_next = torch.full((3,), sigma, dtype=torch.float64), torch.full((3,), sigma_next, dtype=torch.float64)
        out = ddim_step(param, x, x0, sig, sig_next, eta=1.0, noise=z)
        mean, std = ddpm_posterior(param, x, x0, sigma, sigma_next)
        torch.testing.assert_close(out.mean, mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out.std, std.expand(3), rtol=1e-10, atol=0)
        torch.testing.assert_close(out.prev_sample, mean + std * z, rtol=1e-10, atol=1e-10)
        density = torch.distributions.Normal(mean, std).log_prob(out.prev_sample).mean(dim=(1, 2, 3))
        torch.testing.assert_close(out.log_prob, density, rtol=1e-10, atol=1e-10)
        # The update's re-evaluation of a stored transition gives the same density.
        torch.testing.assert_close(ddim_log_prob(param, x, x0, sig, sig_next, out.prev_sample, eta=1.0), density, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.prediction_type)
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_log_prob_is_the_gaussian_density_of_the_returned_transition(param, eta):
    gen = torch.Generator().manual_seed(1)
    sigma, sigma_next = (0.5, 0.4) if isinstance(param, RectifiedFlow) else (2.0, 1.5)
    x, x0, z = (torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    sig, sig_next = torch.full((2,), sigma, dtype=torch.float64), torch.full((2,), sigma_next, dtype=torch.float64)
    out = ddim_step(param, x, x0, sig, sig_next, eta=eta, noise=z)
    density = torch.distributions.Normal(out.mean, out.std.reshape(2, 1, 1, 1).expand_as(x)).log_prob(out.prev_sample)
    torch.testing.assert_close(out.log_prob, density.mean(dim=(1, 2, 3)), rtol=1e-10, atol=1e-10)
    assert (out.std == eta * transition_std(param, sig, sig_next, 1.0)).all()


# 2. marginals given x0 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.prediction_type)
def test_eta_one_rollout_keeps_every_marginal_given_x0(param):
    gen = torch.Generator().manual_seed(2)
    sigmas = schedule(param, 10)
    x0 = MU + DATA_STD * torch.randn(CHAINS, *SHAPE, generator=gen, dtype=torch.float64)
    a, s, _, _ = coefficients(param, sigmas[0], sigmas[0])
    x = a * x0 + s * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    assert_moments(x, *marginal(param, sigmas[0]), f"start sigma {sigmas[0]:.3f}")
    for i in range(sigmas.numel() - 1):
        eta = 1.0 if sigmas[i + 1] > 0 else 0.0  # as the sampler: onto sigma 0 nothing random is left
        x = ddim_step(param, x, x0, *step_sigmas(sigmas, i), eta=eta, noise=torch.randn(x.shape, generator=gen, dtype=torch.float64)).prev_sample
        assert_moments(x, *marginal(param, sigmas[i + 1]), f"sigma {sigmas[i + 1]:.3f}")
        # Conditionally on x0 too: the residual x - alpha x0 is N(0, s^2), uncorrelated with x0.
        a, s, _, _ = coefficients(param, sigmas[i + 1], sigmas[i + 1])
        if s > 0:
            assert_moments(x - a * x0, 0.0, (s**2).item(), f"residual at sigma {sigmas[i + 1]:.3f}")


# 3. the exact denoiser ----------------------------------------------------------------------------------------


def chain_moments(param, sigmas):
    """Mean and variance at every level of DDIM (eta 1) with the exact denoiser, in closed form: one step is
    x' = A x + B + varsigma z with x0_hat = mu + k (x - alpha mu), k = alpha S^2 / (alpha^2 S^2 + s^2)."""
    var_data = DATA_STD**2
    mean, var = marginal(param, sigmas[0])
    moments = [(mean, var)]
    for sigma, sigma_next in itertools.pairwise(sigmas):
        a, s, a_next, s_next = coefficients(param, sigma, sigma_next)
        v = ddpm_posterior(param, torch.zeros(()), torch.zeros(()), sigma, sigma_next)[1] if sigma_next > 0 else torch.zeros(())
        c = (s_next**2 - v**2).sqrt()  # weight of the implied noise
        k = a * var_data / (a**2 * var_data + s**2)
        gain = (a_next - c * a / s) * k + c / s
        offset = (a_next - c * a / s) * (MU - k * a * MU)
        mean, var = (gain * mean + offset).item(), (gain**2 * var + v**2).item()
        moments.append((mean, var))
    return moments


@pytest.mark.parametrize("param,shift", [(EpsilonPrediction(), 1.0), (VPrediction(), 1.0), (RectifiedFlow(), 1.0), (RectifiedFlow(), 3.0)],
                         ids=["epsilon", "v_prediction", "flow", "flow_shift3"])
def test_eta_one_rollout_with_the_exact_denoiser_matches_the_chain_and_converges_to_the_data(param, shift):
    steps = 20
    sigmas = schedule(param, steps, shift)
    model = RawOutputModel(param)  # the exact x0 presented as the raw eps / v / velocity output
    model.oracle.data_std = DATA_STD
    cond = torch.full((CHAINS, *SHAPE), MU, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    mean0, var0 = marginal(param, sigmas[0])
    x = mean0 + math.sqrt(var0) * torch.randn(CHAINS, *SHAPE, generator=gen, dtype=torch.float64)
    predicted = chain_moments(param, sigmas)
    for i in range(steps):
        sigma, sigma_next = step_sigmas(sigmas, i)
        eta = 1.0 if sigmas[i + 1] > 0 else 0.0
        x = ddim_step(param, x, model(x, sigma, cond), sigma, sigma_next, eta=eta,
                      noise=torch.randn(x.shape, generator=gen, dtype=torch.float64)).prev_sample  # fmt: skip
        if (i + 1) % 5 == 0:
            assert_moments(x, *predicted[i + 1], f"step {i + 1} (sigma {sigmas[i + 1]:.3f})")
            assert predicted[i + 1][0] == pytest.approx(marginal(param, sigmas[i + 1])[0], abs=1e-12)  # mean kept exactly
    # The variance deficit is a discretisation error: first order, it halves with twice the steps and vanishes.
    deficits = []
    for n in (100, 200, 400):
        fine_sigmas = schedule(param, n, shift)
        deficits.append(1 - chain_moments(param, fine_sigmas)[-1][1] / marginal(param, fine_sigmas[-1])[1])
    assert all(d > 0 for d in deficits), deficits
    for coarse, fine in itertools.pairwise(deficits):
        assert 1.7 < coarse / fine < 2.3, deficits
