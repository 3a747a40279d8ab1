r"""What a network predicts, and how that maps to the clean sample and the noise.

Every latent lives in the state space of its parametrisation:

.. math::  x_\sigma = \alpha(\sigma)\, x_0 + s(\sigma)\, \epsilon,\qquad \epsilon \sim \mathcal N(0, I)

* Variance preserving models (SD1.x, SD2, SDXL) use the k-diffusion / ComfyUI convention
  :math:`\alpha = 1,\ s = \sigma` with :math:`\sigma = \sqrt{(1 - \bar\alpha)/\bar\alpha}`: the state is the diffusers
  latent divided by :math:`\sqrt{\bar\alpha}`, and the network sees :math:`x / \sqrt{1 + \sigma^2}`.

  - epsilon prediction: :math:`x_0 = x - \sigma\,\hat\epsilon`
  - v prediction (:math:`v = \sqrt{\bar\alpha}\,\epsilon - \sqrt{1-\bar\alpha}\,x_0` in the VP frame):
    :math:`x_0 = x / (1 + \sigma^2) - \sigma\, v / \sqrt{1 + \sigma^2}`

* Rectified flow (SD3, Flux) uses :math:`\alpha = 1 - \sigma,\ s = \sigma`, :math:`\sigma \in [0, 1]`; the network
  predicts the velocity :math:`u = \epsilon - x_0`, so :math:`x_0 = x - \sigma u`.
"""

from __future__ import annotations

import torch


class Parametrization:
    """Base class. ``sigma`` broadcasts against ``x`` (use :func:`append_dims` for per-sample sigmas)."""

    #: Name as used by diffusers' ``prediction_type`` (or "flow").
    prediction_type: str = ""

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def std(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def times_alpha(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """alpha(sigma) * x (variance-preserving models, alpha = 1, skip the multiplication: same numbers, two
        operations fewer per use on every sampling step)."""
        return self.alpha(sigma) * x

    def over_alpha(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x / alpha(sigma) (a no-op for variance-preserving models)."""
        return x / self.alpha(sigma)

    def model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What the network is fed for state ``x`` at noise level ``sigma``."""
        raise NotImplementedError

    def denoised(self, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The predicted clean sample x0 from the raw network output."""
        raise NotImplementedError

    def noise_from(self, x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The noise implied by state ``x`` and clean estimate ``x0`` (x = alpha x0 + std noise, solved for noise)."""
        return (x - self.times_alpha(sigma, x0)) / self.std(sigma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _VariancePreserving(Parametrization):
    def alpha(self, sigma):
        return torch.ones_like(sigma)

    def times_alpha(self, sigma, x):
        return x

    def over_alpha(self, sigma, x):
        return x

    def model_input(self, x, sigma):
        return x / (sigma**2 + 1).sqrt()


class EpsilonPrediction(_VariancePreserving):
    prediction_type = "epsilon"

    def denoised(self, output, x, sigma):
        return x - sigma * output


class VPrediction(_VariancePreserving):
    prediction_type = "v_prediction"

    def denoised(self, output, x, sigma):
        return x / (sigma**2 + 1) - sigma * output / (sigma**2 + 1).sqrt()


class RectifiedFlow(Parametrization):
    prediction_type = "flow"

    def alpha(self, sigma):
        return 1 - sigma

    def model_input(self, x, sigma):
        return x

    def denoised(self, output, x, sigma):
        return x - sigma * output


PARAMETRIZATIONS = {p.prediction_type: p for p in (EpsilonPrediction, VPrediction, RectifiedFlow)}


def parametrization_for(prediction_type: str) -> Parametrization:
    """The parametrisation for a diffusers ``prediction_type`` ("epsilon", "v_prediction") or "flow"."""
    if prediction_type not in PARAMETRIZATIONS:
        raise ValueError(f"prediction_type must be one of {sorted(PARAMETRIZATIONS)}, got {prediction_type!r}")
    return PARAMETRIZATIONS[prediction_type]()


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape per-sample values [B] (or a scalar) so they broadcast against a tensor with ``ndim`` dims."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))
