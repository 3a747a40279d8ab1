"""The toy-world base model as a trainable policy: ``build_policy("toy", steps)`` (pixel space, no VAE).

:mod:`srrl_core.training.models` names :func:`build` by its module path and imports it on first use, so the
training package never imports the toy world.
"""

from __future__ import annotations

from ..adapters.diffusers_unet import DiffusersDenoiser, TextConditioning
from ..sampling.schedules import ddim_sigmas
from ..training.policy import PolicyModel
from . import model as toy


def build(steps: int, device: str = "cpu", weights_dir: str | None = None) -> PolicyModel:
    model = toy.load_toy_model(device=device, weights_dir=weights_dir)
    denoiser = DiffusersDenoiser(model.unet, model.scheduler_config)
    size = model.image_size
    return PolicyModel(
        network=model.unet, denoiser=denoiser, parametrization=denoiser.parametrization,
        encode=lambda prompts: TextConditioning(toy.encode_prompts(model, list(prompts))),
        negative=TextConditioning(toy.negative_embedding(model)), decode=toy.images_from_model,
        sigmas=ddim_sigmas(model.scheduler_config, steps)[0], latent_shape=(3, size, size), lora_key_style="diffusers", name="toyworld",
    )  # fmt: skip
