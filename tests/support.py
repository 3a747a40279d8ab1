"""Small, seeded models and oracles shared by tests and benchmarks (no downloads)."""

from __future__ import annotations

import torch

# The noise schedule Stable Diffusion 1.x ships with (scheduler_config.json of the SD1.4/1.5 repositories).
SD_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32, sample_size: int = 8):
    """A UNet2DConditionModel with the SD1.x block layout at toy width, initialised from ``seed``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return unet.eval().requires_grad_(False)


class GaussianDenoiser:
    r"""The exact denoiser for Gaussian data :math:`x_0 \sim \mathcal N(\mu_c, s_0^2 I)`, conditioned on the mean.

    For a state :math:`x = a x_0 + b\epsilon`: :math:`E[x_0 | x] = \mu + \frac{a s_0^2}{a^2 s_0^2 + b^2}(x - a\mu)`.
    The conditioning is the mean tensor itself ([B, ...]).
    """

    def __init__(self, parametrization, data_std: float = 0.5):
        self.parametrization = parametrization
        self.data_std = data_std
        self.calls = 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        a, b = self.parametrization.alpha(s), self.parametrization.std(s)
        var = self.data_std**2
        return cond + a * var / (a**2 * var + b**2) * (x - a * cond)


def load_pack(module_name: str = "ComfyUI-SRRL"):
    """Import this checkout as a custom-node package the way ComfyUI does (a package named after its folder,
    loaded from the repository's __init__.py), so the pack's relative imports work and its ``nodes`` package never
    shadows ComfyUI's own ``nodes`` module."""
    import importlib.util
    import sys
    from pathlib import Path

    if module_name in sys.modules:
        return sys.modules[module_name]
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(module_name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
