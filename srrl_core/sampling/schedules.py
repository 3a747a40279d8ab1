r"""Noise schedules as descending sigma sequences ``[sigma_0 > ... > sigma_N]`` (N steps, N + 1 levels).

* :class:`VPSchedule` holds a variance-preserving training schedule :math:`\bar\alpha_t` (taken from diffusers'
  scheduler, so every beta schedule diffusers knows is supported) and converts between timesteps and
  :math:`\sigma_t = \sqrt{(1 - \bar\alpha_t)/\bar\alpha_t}`, interpolating linearly in :math:`\log\sigma` between
  integer timesteps.
* :func:`ddim_sigmas` reproduces diffusers' ``DDIMScheduler`` timesteps exactly (its spacing and offset), with the
  final level at ``final_alpha_cumprod`` (sigma 0 when ``set_alpha_to_one``).
* :func:`karras_sigmas` is the schedule of Karras et al. (2022), eq. 5:
  :math:`\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))^\rho`,
  followed by 0.
* :func:`flow_sigmas` is the rectified-flow schedule :math:`1 \to 0` with the SD3 timestep shift
  :math:`\sigma' = s\sigma / (1 + (s - 1)\sigma)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..validation import check_float, check_int


@dataclass(frozen=True)
class VPSchedule:
    """A discrete variance-preserving schedule, indexed by training timestep."""

    alphas_cumprod: torch.Tensor  # [T], float64
    final_alpha_cumprod: float = 1.0  # where DDIM's last step lands (diffusers' set_alpha_to_one)
    _log_sigmas: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_diffusers(cls, config) -> "VPSchedule":
        """Build from a diffusers scheduler or its config (``beta_schedule``, ``beta_start`` ...)."""
        from diffusers import DDIMScheduler  # the betas are diffusers' to define; import only when used

        scheduler = DDIMScheduler.from_config(getattr(config, "config", config))
        return cls(scheduler.alphas_cumprod.double(), float(scheduler.final_alpha_cumprod))

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def sigmas(self) -> torch.Tensor:
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()


    def log_sigmas_on(self, device: torch.device) -> torch.Tensor:
        """log sigma per timestep, cached per device (no host-device copy per model call)."""
        return self._log_sigma_table(device)[0]

    def _log_sigma_table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(log sigma per timestep, gap to the next timestep's), cached per device."""
        key = str(device)
        if key not in self._log_sigmas:
            log_sigmas = self.sigmas.log().to(device)
            self._log_sigmas[key] = (log_sigmas, log_sigmas[1:] - log_sigmas[:-1])
        return self._log_sigmas[key]

    def timestep_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """The continuous timestep whose sigma is ``sigma`` (log-sigma interpolation between the trained timesteps), on sigma's device."""
        sigma = torch.as_tensor(sigma)
        log_sigma = sigma.to(torch.float64).clamp(min=1e-10).log()
        log_sigmas, gaps = self._log_sigma_table(sigma.device)
        flat = log_sigma.reshape(-1)
        # Interval [low, low + 1] holding each log sigma (clamped to the table); called once per model call, so
        # few and cheap ops: index_select and a precomputed gap instead of fancy indexing twice and a subtraction.
        low = torch.searchsorted(log_sigmas, flat).clamp_(1, self.num_train_timesteps - 1).sub_(1)
        w = ((flat - log_sigmas.index_select(0, low)) / gaps.index_select(0, low)).clamp_(0, 1)
        return (low + w).reshape(log_sigma.shape)

    def sigma_of_alpha_cumprod(self, alpha_cumprod: float) -> float:
        return ((1 - alpha_cumprod) / alpha_cumprod) ** 0.5


def ddim_sigmas(scheduler_config, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas [steps + 1], timesteps [steps]) exactly as diffusers' DDIMScheduler walks them."""
    from diffusers import DDIMScheduler

    check_int("steps", steps, 1)
    config = getattr(scheduler_config, "config", scheduler_config)
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    schedule = VPSchedule(scheduler.alphas_cumprod.double(), float(scheduler.final_alpha_cumprod))
    timesteps = scheduler.timesteps.clone()
    final = torch.tensor([schedule.sigma_of_alpha_cumprod(schedule.final_alpha_cumprod)], dtype=torch.float64)
    sigmas = torch.cat([schedule.sigmas[timesteps], final])
    return sigmas, timesteps


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    check_int("steps", steps, 1)
    sigma_min = check_float("sigma_min", sigma_min, 1e-6)
    sigma_max = check_float("sigma_max", sigma_max, sigma_min)
    rho = check_float("rho", rho, 1e-3)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    check_int("steps", steps, 1)
    shift = check_float("shift", shift, 1e-3)
    sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return shift * sigmas / (1 + (shift - 1) * sigmas)
