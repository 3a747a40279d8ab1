"""Small, seeded models and oracles shared by tests and benchmarks (no downloads)."""

from __future__ import annotations

from pathlib import Path

# The SD1.x noise schedule and a seeded toy UNet live with the trainer's model builders; tests share them.
from srrl_core.training.models import SD_SCHEDULER_CONFIG, tiny_unet  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[2]


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


class RawOutputModel:
    """Presents the analytic x0 as a network would: the raw output of each parametrisation, written out here
    independently of srrl_core so that ``Parametrization.denoised`` is checked, not assumed."""

    def __init__(self, parametrization):
        self.parametrization = parametrization
        self.oracle = GaussianDenoiser(parametrization)

    def __call__(self, x, sigma, cond):
        x0 = self.oracle(x, sigma, cond)
        s = sigma.reshape(-1, 1, 1, 1)
        kind = self.parametrization.prediction_type
        if kind == "epsilon":
            raw = (x - x0) / s
        elif kind == "v_prediction":  # v = a*eps - b*x0 in the VP frame, a = 1/sqrt(1+s^2), b = s/sqrt(1+s^2)
            a, b = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
            raw = a * (x - x0) / s - b * x0
        else:  # flow velocity u = eps - x0, x = (1-s) x0 + s eps
            raw = (x - (1 - s) * x0) / s - x0
        return self.parametrization.denoised(raw, x, s)


def load_module_from_path(name: str, path, package: bool = False):
    """Import a file as module ``name`` (cached in sys.modules), whatever pytest's import mode is; with
    ``package`` the file is a package's ``__init__.py`` and its relative imports work."""
    import importlib.util
    import sys

    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "") or "").resolve() == Path(path).resolve():
        return module
    locations = [str(Path(path).parent)] if package else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_pack(module_name: str = "ComfyUI-SRRL"):
    """Import this checkout as a custom-node package the way ComfyUI does (a package named after its folder,
    loaded from the repository's __init__.py), so the pack's relative imports work and its ``nodes`` package never
    shadows ComfyUI's own ``nodes`` module."""
    return load_module_from_path(module_name, REPO / "__init__.py", package=True)
