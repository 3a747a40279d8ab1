"""Base models for the trainer by name: ``build_policy({"name": ..., **options}, steps) -> PolicyModel``.

Built in:

* ``"tiny"``: a seeded, randomly initialised toy-width SD-layout UNet, a hashed-word text encoder and a fixed
  latent -> RGB decode. Nothing is downloaded; it exists so the CLI and tests run anywhere.
* ``"diffusers"``: a Stable Diffusion (1.x / 2.x / XL) pipeline from a local diffusers folder, or from a
  single-file checkpoint together with a local diffusers folder holding its configs (``config``), so that
  diffusers never reaches for the Hub; or a Flux / SD3 (3.5) pipeline from a local folder (rectified flow,
  LoRA in the transformer: :mod:`srrl_core.adapters.diffusers_transformer`). Any other model class in a folder
  is refused before anything is loaded.
* ``"toy"``: the toy-world base model shipped in ``srrl_core/toyworld`` (pixel space, no VAE), built by
  :func:`srrl_core.toyworld.policy.build`, named here by its module path so that this package never imports it.

Register more with :func:`register_model`: a builder, or the ``"package.module:function"`` path of one, imported
when its model is first built.
"""

from __future__ import annotations

import importlib
import json
import os
import zlib
from collections.abc import Callable

import torch

from ..adapters.diffusers_unet import DiffusersDenoiser, TextConditioning, encode_prompts
from ..sampling.schedules import ddim_sigmas
from ..validation import check_choice, check_int
from .policy import PolicyModel

ModelBuilder = Callable[..., PolicyModel]  # builder(steps=..., **options) -> PolicyModel
_BUILDERS: dict[str, ModelBuilder | str] = {}  # a builder, or its "package.module:function" path until first use
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The noise schedule Stable Diffusion 1.x ships with.
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}  # fmt: skip


def register_model(name: str, builder: ModelBuilder | str) -> None:
    """Make ``builder(steps=..., **options)`` available as ``build_policy({"name": name, **options}, steps)``;
    ``builder`` may be the path ``"package.module:function"`` of one, imported when the model is first built."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"model name must be an identifier such as 'tiny', got {name!r}")
    if isinstance(builder, str):
        module, _, attr = builder.partition(":")
        if not module or not attr.isidentifier():
            raise ValueError(f"builder must be a callable or a 'package.module:function' path, got {builder!r}")
    elif not callable(builder):
        raise ValueError(f"builder must be a callable or a 'package.module:function' path, got {builder!r}")
    _BUILDERS[name] = builder


def available_models() -> list[str]:
    return sorted(_BUILDERS)


def build_policy(spec: dict | str, steps: int) -> PolicyModel:
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", "tiny")
    check_choice("model name", name, _BUILDERS)
    builder = _BUILDERS[name]
    if isinstance(builder, str):
        module, _, attr = builder.partition(":")
        builder = _BUILDERS[name] = getattr(importlib.import_module(module), attr)
    return builder(steps=steps, **spec)


# tiny -----------------------------------------------------------------------------------------------------------


class HashTextEncoder(torch.nn.Module):
    """Words -> crc32 buckets -> a seeded embedding (+ position): [B, length, dim]. Stable across processes."""

    def __init__(self, dim: int = 32, length: int = 8, vocab: int = 1024, seed: int = 0):
        super().__init__()
        self.length, self.vocab = length, vocab
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tokens = torch.nn.Embedding(vocab, dim)
            self.positions = torch.nn.Parameter(torch.randn(length, dim) * 0.1)
        self.requires_grad_(False)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(prompts), self.length, dtype=torch.long)  # 0: padding
        for i, prompt in enumerate(prompts):
            words = prompt.lower().split()[: self.length]
            ids[i, : len(words)] = torch.tensor([1 + zlib.crc32(w.encode()) % (self.vocab - 1) for w in words], dtype=torch.long)
        return ids

    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenize(list(prompts)).to(self.positions.device)
        return self.tokens(ids) + self.positions


def tiny_unet(seed: int = 0, sample_size: int = 8, cross_attention_dim: int = 32):
    """A UNet2DConditionModel with the SD1.x block layout at toy width (~0.8 M parameters)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1, cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
        )  # fmt: skip
    return unet.eval().requires_grad_(False)


def latents_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """The tiny model's decoder: sigmoid of the first three latent channels, as images [B, h, w, 3]."""
    return torch.sigmoid(latents[:, :3].float()).permute(0, 2, 3, 1)


def build_tiny(steps: int, seed: int = 0, sample_size: int = 8, device: str = "cpu") -> PolicyModel:
    check_int("sample_size", sample_size, 8)
    unet = tiny_unet(seed, sample_size).to(device)
    text = HashTextEncoder(seed=seed + 1).to(device)
    denoiser = DiffusersDenoiser(unet, SD_SCHEDULER_CONFIG)
    return PolicyModel(
        network=unet, denoiser=denoiser, parametrization=denoiser.parametrization,
        encode=lambda prompts: TextConditioning(text(prompts)), negative=TextConditioning(text([""])),
        decode=latents_to_rgb, sigmas=ddim_sigmas(SD_SCHEDULER_CONFIG, steps)[0], latent_shape=(4, sample_size, sample_size),
        lora_key_style="diffusers", name=f"tiny(seed={seed}, sample_size={sample_size})",
    )  # fmt: skip


# diffusers ------------------------------------------------------------------------------------------------------


# The denoising networks the trainer supports, by the diffusers class a pipeline folder names (model_index.json).
SUPPORTED_NETWORKS = {
    "UNet2DConditionModel": "SD1.x / SD2 / SDXL (unet)",
    "FluxTransformer2DModel": "Flux (transformer)",
    "SD3Transformer2DModel": "SD3 / SD3.5 (transformer)",
}


def pipeline_network_class(folder: str) -> tuple[str, str, str]:
    """(pipeline class, network component, network class) from a diffusers folder's model_index.json; raises
    ValueError at once for a network the trainer does not support (before any weight is read)."""
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise ValueError(f"path {folder!r} is a folder without model_index.json, not a diffusers pipeline")
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    pipeline = index.get("_class_name", "?")
    found = [(c, e[1]) for c, e in index.items() if c in ("unet", "transformer") and isinstance(e, list) and len(e) == 2 and e[1]]
    if found and found[0][1] in SUPPORTED_NETWORKS:
        return pipeline, found[0][0], found[0][1]
    found = f"{found[0][0]} {found[0][1]}" if found else "no unet or transformer"
    supported = "; ".join(f"{cls} = {family}" for cls, family in SUPPORTED_NETWORKS.items())
    raise ValueError(f"{pipeline} ({found}) is not a model family the trainer supports; supported: {supported}")


def build_diffusers(
    steps: int, path: str, config: str | None = None, dtype: str = "fp16", device: str = "cuda", resolution: int | None = None,
    guidance: float = 3.5, max_sequence_length: int = 512,
) -> PolicyModel:
    """A Stable Diffusion pipeline from a local folder, or a single file with a local ``config`` folder; Flux and
    SD3 pipelines from a local folder (``guidance``: Flux's distilled guidance input; ``max_sequence_length``:
    T5 tokens)."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    check_choice("dtype", dtype, DTYPES)
    torch_dtype = DTYPES[dtype]
    if os.path.isdir(path):
        _, component, _ = pipeline_network_class(path)
        if component == "transformer":
            return _build_flow_transformer(steps, path, torch_dtype, device, resolution, guidance, max_sequence_length)
        pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype, local_files_only=True, safety_checker=None)
    elif os.path.isfile(path):
        if config is None or not os.path.isdir(config):
            raise ValueError(
                f"config must be a local diffusers folder (model_index.json and component configs) for the single-file "
                f"checkpoint {path}, got {config!r}; without it diffusers downloads the configs from the Hub"
            )
        pipe = StableDiffusionPipeline.from_single_file(path, config=config, local_files_only=True, torch_dtype=torch_dtype)
    else:
        raise ValueError(f"path must be a diffusers folder or a .safetensors/.ckpt file, got {path!r}")
    pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    denoiser = DiffusersDenoiser.from_pipeline(pipe)
    size = (resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    vae = pipe.vae

    def decode(latents: torch.Tensor) -> torch.Tensor:
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    return PolicyModel(
        network=pipe.unet, denoiser=denoiser, parametrization=denoiser.parametrization,
        encode=lambda prompts: encode_prompts(pipe, list(prompts)), negative=encode_prompts(pipe, [""]),
        decode=decode, sigmas=ddim_sigmas(pipe.scheduler.config, steps)[0],
        latent_shape=(pipe.unet.config.in_channels, size, size), lora_key_style="diffusers", name=os.path.basename(os.path.normpath(path)),
    )  # fmt: skip


def _build_flow_transformer(steps, path, torch_dtype, device, resolution, guidance, max_sequence_length) -> PolicyModel:
    from diffusers import DiffusionPipeline

    from ..adapters import diffusers_transformer as flow

    check_int("max_sequence_length", max_sequence_length, 1)
    with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
        absent = {k: None for k, v in json.load(f).items() if v == [None, None]}  # e.g. SD3 without T5
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype, local_files_only=True, **absent)
    pipe.to(device)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval()
    denoiser = flow.DiffusersTransformerDenoiser(pipe.transformer, guidance=guidance)
    scale = pipe.vae_scale_factor
    size = (resolution or pipe.default_sample_size * scale) // scale
    # Flux packs 2x2 latent patches into tokens of 4C features; SD3 patchifies inside the transformer.
    patch = 2 if denoiser.family == "flux" else pipe.transformer.config.patch_size
    channels = pipe.transformer.config.in_channels // (4 if denoiser.family == "flux" else 1)
    size -= size % patch
    if size < patch:
        raise ValueError(f"resolution must be at least {patch * scale} pixels for this model, got {resolution}")
    sigmas = flow.pipeline_sigmas(pipe, steps, (size // patch) ** 2)
    vae = pipe.vae

    def decode(latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        return (vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    def encode(prompts):
        return flow.encode_prompts(pipe, list(prompts), max_sequence_length)

    return PolicyModel(
        network=pipe.transformer, denoiser=denoiser, parametrization=denoiser.parametrization, encode=encode,
        negative=encode([""]), decode=decode, sigmas=sigmas, latent_shape=(channels, size, size),
        lora_key_style="diffusers", name=os.path.basename(os.path.normpath(path)),
        lora_targets=flow.LORA_TARGETS[type(pipe.transformer).__name__],
    )  # fmt: skip


register_model("tiny", build_tiny)
register_model("diffusers", build_diffusers)
register_model("toy", "srrl_core.toyworld.policy:build")
