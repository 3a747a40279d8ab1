"""SRRL Re-noise Guide: the condition-guided forward process as a node that feeds stock samplers.

It carries a clean LATENT back up the schedule with DDIM inversion under guidance scale w_b and returns the latent
at the level where denoising should resume, the remaining SIGMAS and the step index. Wire it into
* SamplerCustom: LATENT -> latent_image, SIGMAS -> sigmas, add_noise off, sampler "euler" (= DDIM, eta 0);
* KSamplerAdvanced: LATENT -> latent_image, add_noise "disable", same steps and scheduler, start_at_step = the
  start_at_step output, sampler "euler".
"""

from __future__ import annotations

import torch

from srrl_core.sampling import invert, renoise_start

from . import names
from .comfy_denoiser import check_latent_channels, host_sampler, host_sigmas, parametrization_of, progress
from .inputs import check_widgets


class RenoiseGuide:
    DESCRIPTION = (
        "Prompt-guided DDIM inversion (SRRL's condition-guided forward process): re-noise a clean latent part or all "
        "of the way so a stock sampler (SamplerCustom, KSamplerAdvanced) denoises it again."
    )
    CATEGORY = names.CATEGORY
    FUNCTION = "renoise"
    RETURN_TYPES = ("LATENT", "SIGMAS", "INT")
    RETURN_NAMES = ("latent", "sigmas", "start_at_step")
    OUTPUT_TOOLTIPS = (
        "The re-noised latent, in the form a stock sampler resumes from with its noise disabled.",
        "The rest of the schedule, for SamplerCustom.",
        "The step to resume at, for KSamplerAdvanced (same steps and scheduler).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt that guides the inversion."}),
                "negative": ("CONDITIONING", {"tooltip": "The unconditional branch of CFG."}),
                "latent_image": ("LATENT", {"tooltip": "The clean latent to carry back toward noise."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "Steps of the full schedule (use the same in the sampler that continues)."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "Noise schedule (use the same in the sampler that continues)."}),
                "inversion_cfg": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 100.0, "step": 0.05, "round": 0.01, "tooltip": "Guidance scale w_b of the inversion (SRRL reference: 0.1)."}),
                "renoise_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the schedule to invert: 1 = up to the first step (pure noise level)."}),
            }
        }

    def renoise(self, model, positive, negative, latent_image, steps, scheduler, inversion_cfg, renoise_strength):
        import comfy.sample

        check_widgets(RenoiseGuide, locals())  # a NaN inversion_cfg would return an all-NaN latent as success
        latent = latent_image["samples"]
        check_latent_channels(model, latent)
        sigmas = host_sigmas(model, scheduler, steps)
        start = renoise_start(steps, renoise_strength)
        path = sigmas[start:].flip(0)  # ascending: from the clean end up to where denoising resumes
        if path.numel() < 2:
            return ({"samples": latent.clone()}, sigmas[start:], start)
        param = parametrization_of(model)
        if float(param.alpha(path[-1])) <= 0:
            raise ValueError(
                "renoise_strength: a flow model re-noised to sigma 1 is pure noise that a stock sampler cannot resume from a "
                "LATENT; use renoise_strength < 1 or the SRRL Reflective Sampler"
            )
        on_call = progress(model, path.numel() - 1)

        def routine(guided, x, schedule):
            return invert(guided, x, schedule, scale=inversion_cfg)

        # The host receives the ascending path: it starts from the clean latent (sigma ~ 0, so its noise scaling is
        # the identity) and converts the result back with its inverse noise scaling, as a stock sampler expects it.
        sampler = host_sampler(param, 1, on_call, routine)
        samples = comfy.sample.sample_custom(
            model, torch.zeros_like(latent), 1.0, sampler, path, positive, negative, latent, disable_pbar=True, seed=0
        )
        return ({"samples": samples}, sigmas[start:].clone(), start)


NODE_CLASS_MAPPINGS = {names.RENOISE_GUIDE: RenoiseGuide}
NODE_DISPLAY_NAME_MAPPINGS = {names.RENOISE_GUIDE: names.DISPLAY_NAMES[names.RENOISE_GUIDE]}
