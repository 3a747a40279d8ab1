r"""Which stochastic rollout for flow models? Marginal error of the shipped sigma-space DDIM (eta = 1) against
Flow-GRPO's SDE, in closed form on Gaussian data with its exact denoiser.

Data: :math:`x_0 \sim \mathcal N(\mu, S^2)` per element; the flow marginal at level sigma is
:math:`\mathcal N((1-\sigma)\mu, (1-\sigma)^2 S^2 + \sigma^2)`. The exact denoiser is linear,
:math:`\hat x_0 = \mu + k (x - a\mu)`, :math:`k = a S^2 / (a^2 S^2 + \sigma^2)`, :math:`a = 1 - \sigma`, and so is
every step of both samplers, so mean and variance propagate exactly (no Monte Carlo):
:math:`x' = g x + o + \varsigma z \Rightarrow m' = g m + o,\ v' = g^2 v + \varsigma^2`.

* **DDIM, eta = 1** (``srrl_core.sampling.ddim_step``, the trainer's rollout): the DDPM posterior in flow
  coordinates; the last step onto sigma = 0 is deterministic, as in the sampler. Eta = 0 (the Euler ODE of the
  velocity) is the reference for what discretisation alone costs. The gain and offset are read off
  the shipped step itself (it is affine in x), so this measures the code, not a re-derivation.
* **Flow-GRPO SDE** (Liu et al. 2025, eq. 9-10): Euler-Maruyama of the marginal-preserving reverse SDE,
  :math:`x' = x + [v + \frac{\varsigma_t^2}{2\sigma}(x + (1-\sigma)v)]\,\mathrm d t + \varsigma_t\sqrt{-\mathrm d t}\,z`,
  :math:`\varsigma_t = a_n\sqrt{\sigma/(1-\sigma)}` (noise level :math:`a_n` = 0.7, their default; at sigma = 1 the
  ratio uses the second sigma, as their code does), every step stochastic (their rollout).

Reported: the relative variance error of largest size (signed) over the levels sigma > 0, the variance error of the final sample
against the data's S^2, and the mean error (both samplers keep the mean within float64 rounding if exact).

    python bench/bench_flow_rollout.py [--steps 10 20 40] [--shifts 1 3] [--noise-level 0.7]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srrl_core.sampling import RectifiedFlow, ddim_step, flow_sigmas  # noqa: E402

MU, DATA_STD = 0.7, 0.5
FLOW = RectifiedFlow()


def marginal(sigma: float) -> tuple[float, float]:
    """Mean and variance of the flow marginal at level sigma."""
    return (1 - sigma) * MU, (1 - sigma) ** 2 * DATA_STD**2 + sigma**2


def denoiser_gain(sigma: float) -> tuple[float, float]:
    """x0_hat = k x + c for the exact denoiser at level sigma."""
    a = 1 - sigma
    k = a * DATA_STD**2 / (a**2 * DATA_STD**2 + sigma**2)
    return k, MU - k * a * MU


def ddim_affine(eta: float):
    """(gain, offset, noise std) of the shipped DDIM step at ``eta`` with the exact denoiser, read off the step
    itself (it is affine in x)."""

    def affine(sigma: float, sigma_next: float) -> tuple[float, float, float]:
        k, c = denoiser_gain(sigma)
        s, s_next = torch.tensor([sigma], dtype=torch.float64), torch.tensor([sigma_next], dtype=torch.float64)

        def step(x: float):
            x = torch.tensor([x], dtype=torch.float64)
            return ddim_step(FLOW, x, k * x + c, s, s_next, eta=eta if sigma_next > 0 else 0.0,
                             noise=torch.zeros_like(x), log_prob=False)  # fmt: skip

        at_zero = step(0.0)
        return step(1.0).mean.item() - at_zero.mean.item(), at_zero.mean.item(), at_zero.std.item()

    return affine


def flow_grpo_affine(sigma: float, sigma_next: float, sigma_second: float, noise_level: float) -> tuple[float, float, float]:
    """(gain, offset, noise std) of Flow-GRPO's Euler-Maruyama step with the exact denoiser's velocity
    v = (x - x0_hat) / sigma."""
    k, c = denoiser_gain(sigma)
    v_gain, v_offset = (1 - k) / sigma, -c / sigma
    dt = sigma_next - sigma
    ratio_sigma = sigma_second if sigma == 1 else sigma
    var_t = noise_level**2 * sigma / (1 - ratio_sigma)
    x_coef = 1 + var_t / (2 * sigma) * dt
    v_coef = (1 + var_t * (1 - sigma) / (2 * sigma)) * dt
    return x_coef + v_coef * v_gain, v_coef * v_offset, (var_t * -dt) ** 0.5


def propagate(sigmas: list[float], affine) -> list[tuple[float, float]]:
    """Mean and variance at every level, starting from the exact marginal at sigmas[0]."""
    mean, var = marginal(sigmas[0])
    moments = [(mean, var)]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        gain, offset, std = affine(sigma, sigma_next)
        mean, var = gain * mean + offset, gain**2 * var + std**2
        moments.append((mean, var))
    return moments


def errors(sigmas: list[float], moments: list[tuple[float, float]]) -> dict:
    inner = [v / marginal(s)[1] - 1 for s, (_, v) in zip(sigmas[1:-1], moments[1:-1])]
    final_mean, final_var = moments[-1]
    return {"max_level_var_error": max(inner, key=abs), "final_var_error": final_var / DATA_STD**2 - 1,
            "final_mean_error": final_mean - MU}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--shifts", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--noise-level", type=float, default=0.7, help="Flow-GRPO's a (their default 0.7)")
    parser.add_argument("--quick", action="store_true", help="one row per sampler (10 steps, shift 3)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.shifts = [10], [3.0]
    print(f"Gaussian data N({MU}, {DATA_STD}^2), exact denoiser; relative variance errors (0 = marginals kept)\n")
    print("| sampler | steps | shift | max variance error over levels sigma > 0 | final variance error | final mean error |")
    print("|---|---|---|---|---|---|")
    for shift in args.shifts:
        for steps in args.steps:
            sigmas = flow_sigmas(steps, shift).tolist()
            rows = {
                "DDIM eta=1 (shipped)": propagate(sigmas, ddim_affine(1.0)),
                "DDIM eta=0 (Euler ODE)": propagate(sigmas, ddim_affine(0.0)),
                f"Flow-GRPO SDE a={args.noise_level}": propagate(
                    sigmas, lambda s, n: flow_grpo_affine(s, n, sigmas[1], args.noise_level)),
            }  # fmt: skip
            for name, moments in rows.items():
                e = errors(sigmas, moments)
                print(f"| {name} | {steps} | {shift:g} | {e['max_level_var_error']:+.4f} | {e['final_var_error']:+.4f} | "
                      f"{e['final_mean_error']:+.1e} |")


if __name__ == "__main__":
    main()
