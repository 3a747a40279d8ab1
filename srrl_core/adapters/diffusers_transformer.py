r"""diffusers flow transformers (Flux, SD3 / SD3.5) as conditional denoisers ``(x, sigma, cond) -> x0``.

Both are rectified-flow models: the state is :math:`x = (1 - \sigma) x_0 + \sigma\epsilon` (the diffusers latent
itself, no rescaling) and the network predicts the velocity :math:`u = \epsilon - x_0`, so
:math:`x_0 = x - \sigma u` (:class:`srrl_core.sampling.RectifiedFlow`).

* **Flux** (``FluxTransformer2DModel``): the latent [B, C, H, W] is packed into 2x2 patches, [B, HW/4, 4C], with
  (0, row, column) position ids per patch and zero ids per text token; the timestep is sigma (the model scales by
  1000 itself); guidance-distilled checkpoints (``guidance_embeds``) take the distilled guidance scale as an
  input (``guidance``, 3.5 as in FluxPipeline). Conditioning: T5 token states and CLIP's pooled vector.
* **SD3 / SD3.5** (``SD3Transformer2DModel``): the latent goes in unpacked, the timestep is sigma * 1000 (as
  the pipeline's scheduler passes it). Conditioning: the joint text states (two CLIP encoders' token states,
  concatenated and zero-padded to T5's width, followed by T5's; zeros in T5's place when a pipeline ships
  without it) and the two CLIP pooled vectors, concatenated.

Prompts are encoded by the pipeline's own ``encode_prompt``, so tokenisation, truncation and the joint layout are
diffusers'. Conditioning is a :class:`TextConditioning` whose ``added`` dict holds ``pooled_projections``.

LoRA targets per architecture (module-name suffixes for ``TrainConfig.lora_targets``; ``*`` is one path
component). The trainer's default ``to_q, to_k, to_v, to_out.0`` exists in both and adapts the image stream's
attention (and, in Flux's single blocks, their q/k/v); the full lists, :data:`FLUX_LORA_TARGETS` and
:data:`SD3_LORA_TARGETS`, add the text stream and the MLPs. Exported names: ``srrl_core.training.export``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..sampling.parametrization import RectifiedFlow, append_dims
from .diffusers_unet import NetworkDtype, TextConditioning

#: Every attention projection and MLP of Flux's double blocks, and the single blocks' q/k/v and fused MLP /
#: output projections; all of them are mapped by ComfyUI's Flux LoRA key map (``comfy.utils.flux_to_diffusers``).
FLUX_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "single_transformer_blocks.*.proj_mlp", "single_transformer_blocks.*.proj_out",
)  # fmt: skip
#: Every attention projection (incl. SD3.5's second image attention ``attn2``) and MLP of SD3's joint blocks;
#: all mapped by ComfyUI's SD3 LoRA key map (``comfy.utils.mmdit_to_diffusers``).
SD3_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)  # fmt: skip
LORA_TARGETS = {"FluxTransformer2DModel": FLUX_LORA_TARGETS, "SD3Transformer2DModel": SD3_LORA_TARGETS}
FAMILIES = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3"}


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: Flux's 2x2 patch tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent of ``height`` x ``width``."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """(0, row, column) per 2x2 patch, [HW/4, 3] (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


class DiffusersTransformerDenoiser:
    """Wrap a diffusers ``FluxTransformer2DModel`` or ``SD3Transformer2DModel`` (rectified flow)."""

    def __init__(self, transformer, guidance: float = 3.5):
        name = type(transformer).__name__
        if name not in FAMILIES:
            raise ValueError(f"transformer must be one of {sorted(FAMILIES)}, got {name}")
        self.transformer = transformer
        self.family = FAMILIES[name]
        self.guidance = float(guidance)
        self.parametrization = RectifiedFlow()
        self._network_dtype = NetworkDtype()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: TextConditioning) -> torch.Tensor:
        net = self.transformer
        dtype = self._network_dtype(net)  # diffusers' net.dtype walks every submodule on each read
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        embeds = cond.embeds.to(dtype)
        pooled = cond.added["pooled_projections"].to(dtype)
        if self.family == "flux":
            height, width = x.shape[-2:]
            guidance = torch.full_like(sigma, self.guidance) if net.config.guidance_embeds else None
            velocity = net(
                hidden_states=pack_latents(x.to(dtype)), encoder_hidden_states=embeds, pooled_projections=pooled,
                timestep=sigma.to(dtype), img_ids=image_ids(height, width, x.device, dtype),
                txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=dtype), guidance=guidance, return_dict=False,
            )[0]  # fmt: skip
            velocity = unpack_latents(velocity, height, width)
        else:
            velocity = net(hidden_states=x.to(dtype), timestep=(sigma * 1000).to(dtype), encoder_hidden_states=embeds,
                           pooled_projections=pooled, return_dict=False)[0]  # fmt: skip
        return self.parametrization.denoised(velocity.float(), x.float(), append_dims(sigma, x.ndim)).to(x.dtype)


@torch.no_grad()
def encode_prompts(pipeline, prompts: list[str], max_sequence_length: int = 512, device=None) -> TextConditioning:
    """Conditioning from a FluxPipeline's or StableDiffusion3Pipeline's own text encoders."""
    device = device or pipeline.transformer.device
    if FAMILIES.get(type(pipeline.transformer).__name__) == "flux":
        embeds, pooled, _ = pipeline.encode_prompt(prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1,
                                                   max_sequence_length=max_sequence_length)  # fmt: skip
    else:
        embeds, _, pooled, _ = pipeline.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                                      do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)  # fmt: skip
    return TextConditioning(embeds, {"pooled_projections": pooled})


def pipeline_sigmas(pipeline, steps: int, image_tokens: int) -> torch.Tensor:
    """The descending sigmas [steps + 1] (ending at 0) the pipeline's own scheduler walks for ``steps`` steps at
    ``image_tokens`` image tokens: FluxPipeline passes sigmas linspace(1, 1/steps, steps); SD3's pipeline lets
    the scheduler space them from its shifted training range (1 ... ~0.003). Both then apply the scheduler's shift,
    static (``shift``) or, with ``use_dynamic_shifting``, exp(mu) with mu from the token count."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = copy.deepcopy(pipeline.scheduler)  # set_timesteps mutates it
    config = scheduler.config
    kwargs = {}
    if config.get("use_dynamic_shifting", False):
        kwargs["mu"] = calculate_shift(image_tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                       config.get("base_shift", 0.5), config.get("max_shift", 1.15))  # fmt: skip
    if FAMILIES[type(pipeline.transformer).__name__] == "flux":
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device="cpu", **kwargs)
    else:
        scheduler.set_timesteps(steps, device="cpu", **kwargs)
    return scheduler.sigmas.detach().to(torch.float64).cpu()
