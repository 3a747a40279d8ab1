"""The one adapter between ComfyUI's MODEL and srrl_core's guided denoiser.

srrl_core runs inside the host's own sampling entry point: a node hands ``comfy.sample.sample_custom`` a
``KSAMPLER`` whose sampler function is an srrl_core routine. The host therefore does everything it does for a stock
sampler — loads the model through its model management, prepares conditioning (areas, ControlNet, GLIGEN), scales
noise and latents by the model's latent format — and calls back with its CFG-wrapped denoiser ``model_k``. This
module turns ``model_k`` into a ``GuidedDenoiser`` whose CFG scale can change per call (reflection, inversion and the
final pass use different scales), through the host's ``sampler_cfg_function`` hook so that CFG patches a user
applied (RescaleCFG and friends) still run. No second sampling loop: srrl_core's is the only one.

Row order: srrl_core keeps branches prompt-major (row p * G + g); the host pairs latent row i with conditioning row
i mod P, so the host sees branch-major rows (g * P + p). The adapter converts at the boundary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from srrl_core.sampling import EpsilonPrediction, Parametrization, RectifiedFlow


def parametrization_of(model) -> Parametrization:
    """The noise space of a ComfyUI ModelPatcher's model_sampling (only alpha and std matter: the host's
    denoiser already returns x0, whatever the network predicts)."""
    names = {cls.__name__ for cls in type(model_sampling(model)).__mro__}
    return RectifiedFlow() if "CONST" in names else EpsilonPrediction()


def model_sampling(model):
    """The model's sampling object, including a replacement a patch node installed (ModelSamplingDiscrete ...)."""
    if hasattr(model, "get_model_object"):  # current ComfyUI
        return model.get_model_object("model_sampling")
    return model.object_patches.get("model_sampling", model.model.model_sampling)  # the March-2024 host


def to_branch_major(x: torch.Tensor, branches: int) -> torch.Tensor:
    prompts = x.shape[0] // branches
    return x.reshape((prompts, branches) + x.shape[1:]).transpose(0, 1).reshape(x.shape)


def to_prompt_major(x: torch.Tensor, branches: int) -> torch.Tensor:
    prompts = x.shape[0] // branches
    return x.reshape((branches, prompts) + x.shape[1:]).transpose(0, 1).reshape(x.shape)


class HostGuidedDenoiser:
    """srrl_core's ``guided(x, sigma, scale) -> x0`` over the host's CFG-wrapped denoiser."""

    def __init__(self, model_k, extra_args: dict, parametrization: Parametrization, branches: int, on_call: HostProgress):
        self.parametrization = parametrization
        self.branches = branches
        self._model_k = model_k
        self._progress = on_call
        self._scale = 1.0
        options = dict(extra_args.get("model_options", {}))
        self._user_cfg = options.get("sampler_cfg_function")
        options["sampler_cfg_function"] = self._combine
        options["disable_cfg1_optimization"] = True  # the scale changes per call; the host must always run uncond
        self._extra_args = {**extra_args, "model_options": options}

    def _combine(self, args: dict) -> torch.Tensor:
        # The host passes cond/uncond as x - denoised and returns x - result.
        args = {**args, "cond_scale": self._scale}
        if self._user_cfg is not None:
            return self._user_cfg(args)
        return args["uncond"] + (args["cond"] - args["uncond"]) * self._scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, scale: float) -> torch.Tensor:
        self._progress.before_call()
        self._scale = float(scale)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        x_host = to_branch_major(x, self.branches)
        denoised = self._model_k(x_host, sigma, **self._extra_args)
        self._progress.after_call(x_host, sigma, denoised)
        return to_prompt_major(denoised, self.branches)


def host_sampler(parametrization: Parametrization, branches: int, on_call: HostProgress, routine):
    """A host ``KSAMPLER`` that runs ``routine(guided, x, sigmas) -> latents`` with x and the result prompt-major.

    The ``callback`` the host hands the sampler function is not used: KSAMPLER fixes its total to the host's
    schedule length, while a reflective run makes several passes over it. ``on_call`` reports every model call
    to the host's preview/progress callback with the run's true total instead.
    """
    import comfy.samplers

    def sampler_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        guided = HostGuidedDenoiser(model_k, extra_args or {}, parametrization, branches, on_call)
        return to_branch_major(routine(guided, to_prompt_major(x, branches), sigmas), branches)

    return comfy.samplers.KSAMPLER(sampler_function)


class HostProgress:
    """Per model call: before it, raise at once when the user pressed Cancel; after it, hand the host's
    preview/progress callback what a k-diffusion sampler hands it — (call index, denoised x0, x, total) — so the
    canvas shows a live latent preview and the progress bar advances once per call."""

    def __init__(self, total: int, callback: Callable[[int, torch.Tensor, torch.Tensor, int], None] | None):
        self.total = total
        self.calls = 0
        self._callback = callback

    def before_call(self) -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()

    def after_call(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
        # Never report past the planned total (the host's bar clamps, but the preview would say "done" early).
        step = min(self.calls, self.total - 1)
        self.calls += 1
        if self._callback is not None:
            self._callback(step, denoised, x, self.total)


def progress(model, total: int) -> HostProgress:
    """Progress and live previews for ``total`` planned model calls, through the host's own
    ``latent_preview.prepare_callback`` (it owns the ProgressBar and honours ``--preview-method``)."""
    import latent_preview

    return HostProgress(total, latent_preview.prepare_callback(model, total))


def host_sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    """The host's schedule for ``scheduler`` (as its KSampler computes it), float32 on the CPU."""
    import comfy.samplers

    if hasattr(comfy.samplers, "calculate_sigmas"):  # current ComfyUI
        sigmas = comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, steps)
    else:  # the March-2024 host takes the inner model
        sigmas = comfy.samplers.calculate_sigmas_scheduler(model.model, scheduler, steps)
    return sigmas.detach().float().cpu()


def check_latent_channels(model, latent: torch.Tensor, name: str = "latent_image") -> None:
    expected = getattr(model.model.latent_format, "latent_channels", 4)
    if latent.ndim != 4 or latent.shape[1] != expected:
        raise ValueError(f"{name} must be a [B, {expected}, H, W] latent for this model, got shape {tuple(latent.shape)}")
