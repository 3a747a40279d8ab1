"""The trainer's view of a ComfyUI MODEL/CLIP/VAE: srrl_core's PolicyModel over the host's own model.

Training calls the host's ``apply_model`` directly (its input scaling, dtype casting and prediction type), with the
conditioning its ``extra_conds`` builds (cross-attention; SDXL's pooled/size vector; the pooled ``y`` of SD3 and Flux
and Flux's distilled ``guidance``) — the same keyword tensors its sampler would pass. The schedule and the noise
space come from the host's ``model_sampling`` (a patch node's replacement included): rectified flow for
``ModelSamplingFlux`` / ``ModelSamplingSD3`` (``CONST``), the VP noise space otherwise. LoRA goes into
``diffusion_model`` with ComfyUI's own module names, which is how the stock LoraLoader reads keys back.

LoRA targets per host architecture (module-name suffixes, ``*`` = one path component; :data:`LORA_TARGETS`):

* ``unet`` (SD1.x / SD2 / SDXL, ``UNetModel``): the attention projections ``to_q``, ``to_k``, ``to_v``,
  ``to_out.0`` of every transformer block (self- and cross-attention).
* ``flux`` (``comfy.ldm.flux.model.Flux``): in the double blocks the fused attention ``img_attn.qkv`` /
  ``txt_attn.qkv``, the output projections ``img_attn.proj`` / ``txt_attn.proj`` and the MLPs ``img_mlp.0/2``,
  ``txt_mlp.0/2``; in the single blocks the fused qkv+MLP-in ``linear1`` and the output ``linear2``. The
  modulation layers (``*_mod.lin``, ``modulation.lin``), the embedders and the final layer are not adapted.
* ``sd3`` (ComfyUI's MMDiT): in every joint block, for the image (``x_block``) and the text (``context_block``)
  stream, ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, plus SD3.5's second image attention
  ``attn2.qkv`` / ``attn2.proj`` where the model has it. ``adaLN_modulation`` and the embedders are not adapted.

The node's ``lora_targets`` input replaces the list; every suffix must match at least one linear layer.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint

from srrl_core.training import PolicyModel
from srrl_core.training.lora import remove_lora, target_matches

from .comfy_denoiser import host_sigmas, model_sampling, parametrization_of


LORA_TARGETS = {
    "unet": ("to_q", "to_k", "to_v", "to_out.0"),
    "flux": ("img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2", "txt_attn.qkv", "txt_attn.proj", "txt_mlp.0",
             "txt_mlp.2", "single_blocks.*.linear1", "single_blocks.*.linear2"),
    "sd3": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "attn2.qkv", "attn2.proj"),
}  # fmt: skip
#: Default targets a model of the family may lack (SD3 medium has no second image attention; SD3.5 has).
OPTIONAL_TARGETS = {"sd3": ("attn2.qkv", "attn2.proj")}
#: ComfyUI model classes (``model.model``) the trainer accepts, with the diffusion-model class each must hold.
SUPPORTED = {"BaseModel": ("UNetModel", "unet"), "SDXL": ("UNetModel", "unet"),
             "Flux": ("Flux", "flux"), "SD3": ("OpenAISignatureMMDITWrapper", "sd3")}  # fmt: skip
_FAMILY_NAMES = {"unet": "SD1.x/SD2/SDXL UNet", "flux": "Flux", "sd3": "SD3 (MMDiT)"}


@dataclass(frozen=True)
class HostArchitecture:
    """What the trainer needs to know about the host's model: its family and the class names for messages."""

    family: str  # "unet", "flux" or "sd3"
    model_class: str  # model.model, e.g. "Flux"
    network_class: str  # model.model.diffusion_model, e.g. "Flux"
    config_class: str  # model.model.model_config, e.g. "FluxSchnell"

    @property
    def is_dit(self) -> bool:
        return self.family != "unet"

    def describe(self) -> str:
        return f"{_FAMILY_NAMES[self.family]} model ({self.config_class})"


def host_architecture(model) -> HostArchitecture:
    """The family of a ComfyUI MODEL, from its model class (``model.model``) and diffusion-model class; anything
    else is refused here, before any work, naming the classes."""
    base = model.model
    net = getattr(base, "diffusion_model", None)
    model_class, network_class = type(base).__name__, type(net).__name__
    config_class = type(getattr(base, "model_config", None)).__name__
    expected = SUPPORTED.get(model_class)
    if expected is None or expected[0] != network_class:
        supported = ", ".join(f"{m} ({_FAMILY_NAMES[f]})" for m, (_, f) in SUPPORTED.items())
        raise ValueError(f"model: the LoRA Trainer cannot train this MODEL: model class {model_class} (config "
                         f"{config_class}, diffusion model {network_class}). It trains ComfyUI's {supported}.")
    family = expected[1]
    if family == "flux":
        unet_config = getattr(base.model_config, "unet_config", {})
        channels_in, channels_out = unet_config.get("in_channels", 16), unet_config.get("out_channels", 16)
        if channels_in != channels_out:  # Fill / Depth / Canny: extra_conds would need an input image
            raise ValueError(f"model: {config_class} takes {channels_in} input channels for {channels_out} output "
                             "channels (a Flux Fill / Depth / Canny model conditioned on an image); the LoRA Trainer "
                             "trains text-to-image Flux models only")
    return HostArchitecture(family, model_class, network_class, config_class)


def parse_lora_targets(text: str | None) -> tuple[str, ...]:
    """The node's ``lora_targets``: comma- (or newline-) separated module-name suffixes; empty = the default."""
    if text is not None and not isinstance(text, str):
        raise ValueError(f"lora_targets must be a string of comma-separated module-name suffixes, got {text!r}")
    targets = tuple(t.strip() for t in re.split(r"[,\n]", text or "") if t.strip())
    for target in targets:
        if not re.fullmatch(r"[A-Za-z0-9_*]+(\.[A-Za-z0-9_*]+)*", target):
            raise ValueError(f"lora_targets: {target!r} is not a module-name suffix (dot-separated names such as "
                             "img_attn.qkv or to_q, '*' for one path component), in a comma-separated list")
    return targets


def lora_targets_for(arch: HostArchitecture, network: torch.nn.Module, requested: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The LoRA targets for ``network``: ``requested`` if given, else the family's default list (without the
    optional entries the model lacks). Raises a ValueError naming ``lora_targets`` for a suffix that matches no
    layer LoRA can adapt."""
    matches = target_matches(network, requested or LORA_TARGETS[arch.family])
    if not requested:
        optional = OPTIONAL_TARGETS.get(arch.family, ())
        return tuple(t for t, names in matches.items() if names or t not in optional)
    unmatched = [t for t, names in matches.items() if not names]
    if unmatched:
        raise ValueError(f"lora_targets: {', '.join(map(repr, unmatched))} match(es) no linear or convolution layer "
                         f"of this {arch.describe()}. Targets are suffixes of ComfyUI's module names in "
                         f"model.diffusion_model; leave lora_targets empty for this model's default: "
                         f"{', '.join(LORA_TARGETS[arch.family])}")
    return requested


@dataclass
class HostConditioning:
    """Keyword tensors for ``BaseModel.apply_model`` (``c_crossattn``, ``y`` ...), batch-first.

    ``repeatable``: keys whose token axis (dim 1) may be repeated to batch rows of different lengths — the host's
    own rule for UNet cross-attention (``CONDCrossAttn``: repeating every token k times leaves cross-attention
    unchanged). Flux and SD3 attend jointly over text and image tokens, where that is not exact, so rows of
    different lengths are refused there."""

    kwargs: dict[str, torch.Tensor]
    repeatable: frozenset = field(default_factory=frozenset)

    @property
    def batch_size(self) -> int:
        return next(iter(self.kwargs.values())).shape[0]

    def repeat_interleave(self, repeats: int) -> "HostConditioning":
        return HostConditioning({k: v.repeat_interleave(repeats, dim=0) for k, v in self.kwargs.items()}, self.repeatable)

    def concat(self, other: "HostConditioning") -> "HostConditioning":
        return HostConditioning({k: _cat([v, other.kwargs[k]], k, k in self.repeatable) for k, v in self.kwargs.items()},
                                self.repeatable)  # fmt: skip


def _cat(tensors: list[torch.Tensor], key: str, repeatable: bool) -> torch.Tensor:
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) == 1:
        return torch.cat(tensors)
    lengths = sorted({t.shape[1] for t in tensors}) if all(t.ndim == 3 for t in tensors) else []
    if repeatable and lengths and len({tuple(t.shape[2:]) for t in tensors}) == 1:
        total = math.lcm(*lengths)
        return torch.cat([t.repeat(1, total // t.shape[1], 1) for t in tensors])
    if lengths and key == "c_crossattn":
        raise ValueError(f"prompts: the training prompts (and the empty negative prompt) encode to text conditionings of "
                         f"different lengths ({', '.join(map(str, lengths))} tokens); this model attends jointly over "
                         "text and image tokens, so they cannot share a batch. Shorten the longest prompts (Flux: at "
                         "most 256 T5 tokens; SD3: 77 tokens per text encoder)")  # fmt: skip
    raise ValueError(f"conditioning {key!r} has different shapes across prompts: {sorted(shapes)}")


def training_sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    """The host schedule, ending at the model's smallest noise level instead of 0: the stochastic rollout's last
    transition must keep a variance for its log-probability (diffusers' DDIM ends there too)."""
    sigmas = host_sigmas(model, scheduler, steps).double()
    sigma_min = float(model_sampling(model).sigma_min)
    if sigmas[-1] == 0 and sigmas[-2] > sigma_min:
        sigmas[-1] = sigma_min
    return sigmas


def policy_from_host(model, clip, vae, width: int, height: int, scheduler: str, steps: int, name: str,
                     lora_targets: tuple[str, ...] | None = None, guidance: float | None = None) -> PolicyModel:
    """A PolicyModel over the host's loaded model (call inside :func:`trainable`). ``lora_targets``: from
    :func:`lora_targets_for` (default: the architecture's list). ``guidance``: Flux's distilled guidance, handed to
    the model's ``extra_conds`` (None: the model's own default, 3.5 for Flux)."""
    base = model.model
    channels = getattr(base.latent_format, "latent_channels", 4)
    cache: dict[str, dict[str, torch.Tensor]] = {}
    repeatable: set[str] = set()

    def encode_one(prompt: str) -> dict[str, torch.Tensor]:
        if prompt not in cache:
            tokens = clip.tokenize(prompt)
            cross_attn, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            # The host's own conditioning: Flux.extra_conds adds guidance (``guidance``, else 3.5, FluxGuidance's
            # default) and the pooled vector y; SD3's adds y; SDXL's its pooled/size vector.
            extra = {} if guidance is None else {"guidance": float(guidance)}
            conds = base.extra_conds(cross_attn=cross_attn, pooled_output=pooled, width=width, height=height,
                                     device=cross_attn.device, **extra)  # fmt: skip
            for key, cond in conds.items():
                if not isinstance(getattr(cond, "cond", None), torch.Tensor):
                    raise ValueError(f"model: its conditioning {key!r} ({type(cond).__name__}) is not a tensor; "
                                     "the LoRA Trainer cannot batch it")  # fmt: skip
                if type(cond).__name__ == "CONDCrossAttn":
                    repeatable.add(key)
            cache[prompt] = {key: cond.cond.clone() for key, cond in conds.items()}
        return cache[prompt]

    def encode(prompts: list[str]) -> HostConditioning:
        rows = [encode_one(p) for p in prompts]
        device = next(base.diffusion_model.parameters()).device
        return HostConditioning({k: _cat([r[k] for r in rows], k, k in repeatable).to(device) for k in rows[0]},
                                frozenset(repeatable))  # fmt: skip

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: HostConditioning) -> torch.Tensor:
        return base.apply_model(x, sigma, **cond.kwargs)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        images = vae.decode(base.process_latent_out(latents.float()))
        return images.reshape((-1,) + images.shape[-3:]).float().clamp(0, 1)

    return PolicyModel(
        network=base.diffusion_model, denoiser=denoiser, parametrization=parametrization_of(model), encode=encode,
        negative=encode([""]), decode=decode, sigmas=training_sigmas(model, scheduler, steps),
        latent_shape=(channels, height // 8, width // 8), lora_key_style="ldm", name=name,
        lora_targets=tuple(lora_targets or LORA_TARGETS["unet"]),
    )  # fmt: skip


@contextlib.contextmanager
def trainable(model, gradient_checkpointing: bool = False):
    """Load the model the host's way, leave inference mode and give the network ordinary (non-inference) weight
    tensors — autograd cannot save the host's inference tensors for backward. The base weights keep the host's
    dtype (the LoRA weights and so AdamW's state are float32: ``srrl_core.training.lora.add_lora``).
    ``gradient_checkpointing``: recompute each transformer block's activations in the backward pass instead of
    keeping them (:func:`checkpointed_blocks`). Afterwards the LoRA layers and the checkpointing are removed, so
    the host's model is its base model again."""
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
            with _out_of_place_residual_adds(), contextlib.ExitStack() as stack:
                if gradient_checkpointing:
                    stack.enter_context(checkpointed_blocks(network))
                yield
        finally:
            remove_lora(network)


@contextlib.contextmanager
def checkpointed_blocks(network: torch.nn.Module):
    """Gradient checkpointing for ComfyUI's DiTs while training.

    SD3's MMDiT has the host's own switch (``use_checkpoint``, non-reentrant ``torch.utils.checkpoint`` per joint
    block), which is turned on. ComfyUI's Flux has no checkpointing hook, so each double/single block's
    ``forward`` is wrapped in non-reentrant ``torch.utils.checkpoint`` while gradients are enabled (the no-grad
    rollouts run the block as is); non-reentrant because a block's inputs need not require grad (the first block
    sees frozen embeddings) while its LoRA weights do. A network with neither (UNets) is left as it is."""
    if hasattr(network, "use_checkpoint") and hasattr(network, "joint_blocks"):
        previous = network.use_checkpoint
        network.use_checkpoint = True
        try:
            yield
        finally:
            network.use_checkpoint = previous
        return
    blocks = [b for name in ("double_blocks", "single_blocks") for b in getattr(network, name, ())]
    saved = [(block, block.__dict__.get("forward")) for block in blocks]
    for block in blocks:
        block.forward = _checkpointed(block.forward)
    try:
        yield
    finally:
        for block, forward in saved:
            if forward is None:
                del block.forward
            else:
                block.forward = forward


def _checkpointed(forward):
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


@contextlib.contextmanager
def _out_of_place_residual_adds():
    """The March-2024 host updates residuals in place (``x += n`` in its transformer blocks) after LayerNorm saved
    ``x`` for backward, which autograd rejects; current ComfyUI's Flux blocks do it on their text stream
    (``txt += ...``), which mutates the block's input — a gradient-checkpointed block then recomputes from the
    mutated input. While training, ``+=`` where either side requires grad returns ``x + n`` instead: the same
    values, out of place (Python rebinds the name to the result)."""
    original = torch.Tensor.__iadd__

    def iadd(self, other):
        if torch.is_grad_enabled() and (self.requires_grad or getattr(other, "requires_grad", False)):
            return self + other
        return original(self, other)

    torch.Tensor.__iadd__ = iadd
    try:
        yield
    finally:
        torch.Tensor.__iadd__ = original
