r"""Export LoRA weights as a kohya-style safetensors file that ComfyUI's LoraLoader reads.

For every adapted module with path ``p`` (dots -> underscores) the file holds

* ``lora_unet_<p>.lora_down.weight`` = :math:`A` ([r, d_in] or [r, c_in, k, k] for convolutions),
* ``lora_unet_<p>.lora_up.weight`` = :math:`B` ([d_out, r] or [c_out, r, 1, 1]),
* ``lora_unet_<p>.alpha`` = :math:`\alpha` (scalar), the update being :math:`\frac{\alpha}{r} B A`.

ComfyUI (comfy/lora.py, ``model_lora_keys_unet``) accepts ``lora_unet_<p>`` for both namings of an SD UNet: the
paths of its own ``diffusion_model`` modules (LDM naming, e.g. ``input_blocks_1_1_transformer_blocks_0_attn1_to_q``)
and diffusers UNet paths (``down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``), which it maps through
its diffusers key map. :func:`diffusers_to_ldm` renames diffusers paths to LDM ones for a standard SD / SDXL UNet.

Flow transformers (diffusers ``FluxTransformer2DModel``, ``SD3Transformer2DModel``) are written as
``lora_transformer_<diffusers path>`` (OneTrainer's naming), which ComfyUI maps for both families through
``comfy.utils.flux_to_diffusers`` / ``mmdit_to_diffusers`` — separate q/k/v LoRAs land on slices of its fused
``qkv`` / ``linear1`` weights. Their "ldm" names fuse q, k and v into one layer, which a per-layer LoRA cannot
express, so only the native naming is offered for them.

ComfyUI's own DiTs (its ``comfy.ldm.flux.model.Flux`` and MMDiT, trained in the graph by the LoRA Trainer node)
already carry ComfyUI's module names and adapt the fused layers whole, so "ldm" writes them as they are:
``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_unet_joint_blocks_0_x_block_attn_qkv`` (kohya's naming for
Flux and SD3). ``model_lora_keys_unet`` maps ``lora_unet_<path>`` for every ``diffusion_model.<path>.weight`` of
any model, in the March-2024 host and in current ComfyUI.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
import time

import torch

from ..validation import check_choice
from .lora import ADAPTER, lora_layers

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_lora_name(name: str) -> str:
    """A file-name-safe LoRA name: letters, digits, '.', '_', '-'; no path separators, no leading dot.

    Returns the name without a trailing ``.safetensors``: "x.safetensors" and "x" name the same file (the
    extension is added when writing)."""
    if isinstance(name, str) and name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"lora_name must be 1-128 characters of letters, digits, '.', '_' or '-' starting with a letter or digit "
            f"(no path separators or '..'), got {name!r}"
        )
    return name


# diffusers transformer classes whose LoRA ComfyUI reads as lora_transformer_<diffusers path>.
TRANSFORMER_CLASSES = ("FluxTransformer2DModel", "SD3Transformer2DModel")


def kohya_prefix(module_path: str, kind: str = "unet") -> str:
    return f"lora_{kind}_" + module_path.replace(".", "_")


def is_flow_transformer(network: torch.nn.Module) -> bool:
    return type(network).__name__ in TRANSFORMER_CLASSES


def kohya_state_dict(
    network: torch.nn.Module, *, to_ldm: dict | None = None, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """kohya keys -> tensors for every LoRA layer of ``network``; ``to_ldm`` renames diffusers paths first
    (a UNet config for :func:`diffusers_to_ldm`)."""
    state = {}
    kind = "transformer" if is_flow_transformer(network) else "unet"
    for path, layer in lora_layers(network).items():
        if to_ldm is not None:
            path = diffusers_to_ldm(path, to_ldm)
        down = layer.lora_A[ADAPTER].weight.detach()
        up = layer.lora_B[ADAPTER].weight.detach()
        rank = down.shape[0]
        prefix = kohya_prefix(path, kind)
        state[f"{prefix}.lora_down.weight"] = down.to("cpu", dtype).contiguous()
        state[f"{prefix}.lora_up.weight"] = up.to("cpu", dtype).contiguous()
        # alpha / rank must equal peft's scaling (alpha / r, or alpha / sqrt(r) with rsLoRA).
        state[f"{prefix}.alpha"] = torch.tensor(float(layer.scaling[ADAPTER]) * rank, dtype=dtype)
    if not state:
        raise ValueError("network holds no LoRA layers to export")
    return state


def export_lora(
    network: torch.nn.Module,
    path: str,
    *,
    key_style: str = "diffusers",
    unet_config: dict | None = None,
    dtype: torch.dtype = torch.float16,
    metadata: dict | None = None,
) -> str:
    """Write ``network``'s LoRA to ``path`` (kohya keys, safetensors, atomically); returns the path.

    ``key_style`` names the keys: "diffusers" keeps the network's own module paths; "ldm" keeps them when the
    network already has LDM names (ComfyUI's ``diffusion_model``) and otherwise converts diffusers paths with
    ``unet_config`` (the diffusers UNet config: ``layers_per_block``, ``down_block_types`` ...).
    """
    check_choice("key_style", key_style, ("diffusers", "ldm"))
    if key_style == "ldm" and is_flow_transformer(network):
        raise ValueError(f"key_style 'ldm' is for SD UNets; a {type(network).__name__} exports its diffusers names "
                         "(lora_transformer_*, which ComfyUI's LoraLoader maps): use key_style 'diffusers' "
                         "(export_key_style = \"native\")")
    to_ldm = unet_config if key_style == "ldm" and _has_diffusers_names(network) else None
    if key_style == "ldm" and _has_diffusers_names(network) and unet_config is None:
        raise ValueError("unet_config is required to export a diffusers-named network with key_style='ldm'")
    state = kohya_state_dict(network, to_ldm=to_ldm, dtype=dtype)
    meta = {"ss_network_module": "networks.lora", "srrl_key_style": key_style}
    meta.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    save_safetensors_atomic(state, path, meta)
    return path


# Temporary files of an atomic write: hidden, and with an extension no model list shows (a kill mid-save must not
# leave a file that LoraLoader lists). Older versions wrote ".tmp-*.safetensors"; both are cleaned up.
TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".safetensors.part"
_STALE_PATTERNS = (TEMP_PREFIX + "*" + TEMP_SUFFIX, TEMP_PREFIX + "*.safetensors")


def remove_stale_temp_files(folder: str, older_than: float = 60.0) -> list[str]:
    """Delete temporary files of atomic writes in ``folder`` not touched for ``older_than`` seconds (a live write
    keeps its file's mtime fresh); returns the removed paths."""
    removed = []
    now = time.time()
    for pattern in _STALE_PATTERNS:
        for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
            try:
                if os.path.isfile(path) and now - os.path.getmtime(path) > older_than:
                    os.remove(path)
                    removed.append(path)
            except OSError:  # removed concurrently, or not ours to remove
                pass
    return removed


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    """safetensors write to a temporary file in the same folder, then ``os.replace`` (never a torn file)."""
    from safetensors.torch import save_file

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _has_diffusers_names(network: torch.nn.Module) -> bool:
    return any(p.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for p in lora_layers(network))


# Diffusers -> LDM module paths of a standard SD UNet (SD1.x, SD2, SDXL): blocks are renumbered, resnet
# sub-modules renamed; attention blocks keep their inner names.
_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
           "conv_shortcut": "skip_connection", "norm1": "in_layers.0", "norm2": "out_layers.0"}  # fmt: skip
_BASIC = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "conv_norm_out": "out.0",
          "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
          "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # fmt: skip


def diffusers_to_ldm(path: str, unet_config: dict) -> str:
    """The LDM (original SD / ComfyUI) path of the diffusers UNet module ``path``."""
    config = getattr(unet_config, "config", unet_config)
    blocks = len(config["down_block_types"])
    per_block = config.get("layers_per_block", 2)
    layers = [per_block] * blocks if isinstance(per_block, int) else list(per_block)
    for prefix, ldm in _BASIC.items():
        if path == prefix or path.startswith(prefix + "."):
            return ldm + path[len(prefix):]
    parts = path.split(".")
    head, rest = parts[:4], parts[4:]
    if parts[0] == "down_blocks":
        block, kind, index = int(parts[1]), parts[2], int(parts[3])
        if kind == "downsamplers":  # downsamplers.0.conv -> input_blocks.N.0.op
            number = 1 + sum(n + 1 for n in layers[:block]) + layers[block]
            return ".".join([f"input_blocks.{number}.0.op"] + parts[5:])
        number = 1 + sum(n + 1 for n in layers[:block]) + index
        return _inner(f"input_blocks.{number}", kind, rest)
    if parts[0] == "mid_block":
        kind, index = parts[1], int(parts[2])
        position = 1 if kind == "attentions" else 2 * index
        return _inner("middle_block", kind, parts[3:], position)
    if parts[0] == "up_blocks":
        block, kind, index = int(parts[1]), parts[2], int(parts[3])
        up_layers = [n + 1 for n in reversed(layers)]
        start = sum(up_layers[:block])
        if kind == "upsamplers":  # after the last resnet (and its attention, when the block has one)
            has_attention = "CrossAttn" in config["up_block_types"][block]
            return ".".join([f"output_blocks.{start + up_layers[block] - 1}.{2 if has_attention else 1}.conv"] + parts[5:])
        return _inner(f"output_blocks.{start + index}", kind, rest)
    raise ValueError(f"path must be a module path of a diffusers UNet2DConditionModel, got {path!r} ({head})")


def _inner(block: str, kind: str, rest: list[str], position: int | None = None) -> str:
    if kind == "resnets":
        name = ".".join(rest)
        for diffusers, ldm in _RESNET.items():
            if name == diffusers or name.startswith(diffusers + "."):
                name = ldm + name[len(diffusers):]
                break
        return f"{block}.{0 if position is None else position}.{name}"
    if kind == "attentions":
        return ".".join([f"{block}.{1 if position is None else position}"] + rest)
    raise ValueError(f"unknown UNet sub-block kind {kind!r} in {block}")
