"""The trainer's view of a ComfyUI MODEL/CLIP/VAE: srrl_core's PolicyModel over the host's own model.

Training calls the host's ``apply_model`` directly (its input scaling, dtype casting and prediction type), with the
conditioning its ``extra_conds`` builds (cross-attention, and SDXL's pooled/size vector) — the same keyword tensors
its sampler would pass. LoRA goes into ``diffusion_model`` with ComfyUI's (LDM) module names, which is how the
stock LoraLoader reads keys back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from srrl_core.training import PolicyModel
from srrl_core.training.lora import remove_lora

from .comfy_denoiser import host_sigmas, model_sampling, parametrization_of


@dataclass
class HostConditioning:
    """Keyword tensors for ``BaseModel.apply_model`` (``c_crossattn``, ``y`` ...), batch-first."""

    kwargs: dict[str, torch.Tensor]

    @property
    def batch_size(self) -> int:
        return next(iter(self.kwargs.values())).shape[0]

    def repeat_interleave(self, repeats: int) -> "HostConditioning":
        return HostConditioning({k: v.repeat_interleave(repeats, dim=0) for k, v in self.kwargs.items()})

    def concat(self, other: "HostConditioning") -> "HostConditioning":
        return HostConditioning({k: torch.cat([v, other.kwargs[k]]) for k, v in self.kwargs.items()})


def training_sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    """The host schedule, ending at the model's smallest noise level instead of 0: the stochastic rollout's last
    transition must keep a variance for its log-probability (diffusers' DDIM ends there too)."""
    sigmas = host_sigmas(model, scheduler, steps).double()
    sigma_min = float(model_sampling(model).sigma_min)
    if sigmas[-1] == 0 and sigmas[-2] > sigma_min:
        sigmas[-1] = sigma_min
    return sigmas


def policy_from_host(model, clip, vae, width: int, height: int, scheduler: str, steps: int, name: str) -> PolicyModel:
    """A PolicyModel over the host's loaded model (call inside :func:`trainable`)."""
    base = model.model
    channels = getattr(base.latent_format, "latent_channels", 4)
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def encode_one(prompt: str) -> dict[str, torch.Tensor]:
        if prompt not in cache:
            tokens = clip.tokenize(prompt)
            cross_attn, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            conds = base.extra_conds(cross_attn=cross_attn, pooled_output=pooled, width=width, height=height,
                                     device=cross_attn.device)  # fmt: skip
            cache[prompt] = {key: cond.cond.clone() for key, cond in conds.items()}
        return cache[prompt]

    def encode(prompts: list[str]) -> HostConditioning:
        rows = [encode_one(p) for p in prompts]
        device = next(base.diffusion_model.parameters()).device
        return HostConditioning({k: torch.cat([r[k] for r in rows]).to(device) for k in rows[0]})

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: HostConditioning) -> torch.Tensor:
        return base.apply_model(x, sigma, **cond.kwargs)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        images = vae.decode(base.process_latent_out(latents.float()))
        return images.reshape((-1,) + images.shape[-3:]).float().clamp(0, 1)

    return PolicyModel(
        network=base.diffusion_model, denoiser=denoiser, parametrization=parametrization_of(model), encode=encode,
        negative=encode([""]), decode=decode, sigmas=training_sigmas(model, scheduler, steps),
        latent_shape=(channels, height // 8, width // 8), lora_key_style="ldm", name=name,
    )  # fmt: skip


@contextlib.contextmanager
def trainable(model):
    """Load the model the host's way, leave inference mode and give the network ordinary (non-inference) weight
    tensors — autograd cannot save the host's inference tensors for backward. Afterwards the LoRA layers are
    removed, so the host's model is its base model again."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    network = model.model.diffusion_model
    with torch.inference_mode(False), torch.enable_grad():
        for module in network.modules():
            for name, param in module._parameters.items():
                if param is not None and param.is_inference():
                    module._parameters[name] = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()
        try:
            with _out_of_place_residual_adds():
                yield
        finally:
            remove_lora(network)


@contextlib.contextmanager
def _out_of_place_residual_adds():
    """The March-2024 host updates residuals in place (``x += n`` in its transformer blocks) after LayerNorm saved
    ``x`` for backward, which autograd rejects. While training, ``+=`` on a tensor that requires grad returns
    ``x + n`` instead: the same values, out of place (Python rebinds the name to the result)."""
    original = torch.Tensor.__iadd__

    def iadd(self, other):
        if torch.is_grad_enabled() and self.requires_grad:
            return self + other
        return original(self, other)

    torch.Tensor.__iadd__ = iadd
    try:
        yield
    finally:
        torch.Tensor.__iadd__ = original
