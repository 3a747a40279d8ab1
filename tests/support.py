"""Small, seeded models and oracles shared by tests and benchmarks (no downloads)."""

from __future__ import annotations

import torch

# The SD1.x noise schedule and a seeded toy UNet live with the trainer's model builders; tests share them.
from srrl_core.training.models import SD_SCHEDULER_CONFIG, tiny_unet  # noqa: E402,F401


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
