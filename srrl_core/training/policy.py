"""What the trainer needs from a backend (a diffusers pipeline, ComfyUI's MODEL, a toy model): one small bundle.

The trainer never looks inside the backend. It injects LoRA into ``network``, samples and trains through the
conditional ``denoiser`` (which must call ``network``), and scores images that ``decode`` produces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..sampling.guidance import ClassifierFreeGuidance
from ..sampling.parametrization import Parametrization
from ..validation import check_choice, check_sigmas

KEY_STYLES = ("diffusers", "ldm")


@dataclass
class PolicyModel:
    """A diffusion model as a trainable policy.

    * ``network``: the ``torch.nn.Module`` LoRA is injected into (a diffusers ``UNet2DConditionModel``, or
      ComfyUI's ``model.diffusion_model``). Its own weights stay frozen.
    * ``denoiser(x, sigma, cond) -> x0``: the conditional clean-sample prediction in the parametrisation's state
      space, ``sigma`` a tensor [B] (one level per row). It must call ``network`` and stay differentiable (no
      ``no_grad`` / ``inference_mode`` inside): the update backpropagates through it.
    * ``encode(prompts) -> cond``: conditioning for a list of prompts. A tensor [P, ...] or an object with
      ``batch_size``, ``repeat_interleave(n)``, ``concat(other)`` (as the engine's CFG needs) and, for the
      update, ``index_select(indices)`` — dataclasses whose fields are tensors (or dicts of tensors), such as
      :class:`srrl_core.adapters.diffusers_unet.TextConditioning`, are handled without it.
    * ``negative``: conditioning of the empty prompt (batch 1), the unconditional branch of CFG.
    * ``decode(latents) -> images``: clean latents [B, C, h, w] to images [B, H, W, 3] in [0, 1] for the reward.
    * ``sigmas``: the descending schedule of ``steps`` DDIM steps (e.g. ``ddim_sigmas(config, 20)[0]``).
    * ``latent_shape``: (C, h, w) of one latent.
    * ``lora_key_style``: how ``network``'s module names read — "diffusers" (``down_blocks.0.attentions.0...``)
      or "ldm" (``input_blocks.1.1...``, ComfyUI's ``diffusion_model``); exported keys keep the same names.
    * ``name``: what the base model is called in logs and checkpoints.
    * ``lora_targets``: the module-name suffixes LoRA adapts unless ``TrainConfig.lora_targets`` names others
      (UNet attention by default; flow transformers bring their own lists).
    """

    network: torch.nn.Module
    denoiser: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    parametrization: Parametrization
    encode: Callable[[list[str]], Any]
    negative: Any
    decode: Callable[[torch.Tensor], torch.Tensor]
    sigmas: torch.Tensor
    latent_shape: tuple[int, int, int]
    lora_key_style: str = "diffusers"
    name: str = "model"
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def __post_init__(self):
        check_choice("lora_key_style", self.lora_key_style, KEY_STYLES)
        check_sigmas("sigmas", self.sigmas)
        if len(self.latent_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in self.latent_shape):
            raise ValueError(f"latent_shape must be three positive ints (C, h, w), got {self.latent_shape!r}")

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def steps(self) -> int:
        return self.sigmas.numel() - 1

    def guided(self, cond) -> ClassifierFreeGuidance:
        """The CFG-guided denoiser for conditioning rows ``cond`` (P prompts serve P * G latent rows)."""
        return ClassifierFreeGuidance(self.denoiser, cond, self.negative, self.parametrization)


def take_rows(cond, indices: torch.Tensor | Sequence[int]):
    """Conditioning rows ``indices`` (in that order, repeats allowed) of a conditioning batch."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    if isinstance(cond, torch.Tensor):
        return cond[indices.to(cond.device)]
    if hasattr(cond, "index_select"):
        return cond.index_select(indices)
    if dataclasses.is_dataclass(cond):
        return dataclasses.replace(cond, **{f.name: _take(getattr(cond, f.name), indices) for f in dataclasses.fields(cond)})
    raise TypeError(
        f"conditioning of type {type(cond).__name__} must be a tensor, a dataclass of tensors, or provide index_select(indices)"
    )


def _take(value, indices):
    if isinstance(value, torch.Tensor):
        return value[indices.to(value.device)]
    if isinstance(value, dict):
        return {k: _take(v, indices) for k, v in value.items()}
    return value  # None and plain settings are shared by every row
