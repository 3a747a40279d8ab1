"""The built-in tiny base model: a pixel-space diffusers UNet with a tiny CLIP-style text encoder.

* ``unet``: ``diffusers.UNet2DConditionModel`` on 32x32x3 pixels in [-1, 1] (no VAE), epsilon prediction,
  channels (32, 64, 64) at 32x32, 16x16 and 8x8, one ResNet per block, cross-attention on the text encoder's
  states at 8x8 and in the 4x4 middle block (attention at 16x16 doubled the CPU cost for no gain seen).
* ``text_encoder``: ``transformers.CLIPTextModel`` (hidden 64, 2 layers) on CLIP BPE tokens (see text_encoder.py).
* ``scheduler_config``: a diffusers ``DDIMScheduler`` config (linear betas 1e-4 .. 0.02, 1000 steps,
  "trailing" spacing, final alpha 1, no clipping).

Weights ship in ``srrl_core/toyworld/weights/`` as fp16 safetensors (``unet.safetensors``,
``text_encoder.safetensors``) next to ``unet_config.json``, ``scheduler_config.json`` and ``training.json``.

Images <-> model space: ``x = 2 * image - 1`` with the channel axis first; ``images_from_model`` inverts it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..validation import check_float, check_int
from .text_encoder import TEXT_ENCODER_CONFIG, build_text_encoder, encode_tokens, tokenize

WEIGHTS_DIR = Path(__file__).with_name("weights")
IMAGE_SIZE = 32

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=TEXT_ENCODER_CONFIG["hidden_size"],
    attention_head_dim=4,  # diffusers' legacy name: the number of heads (16 channels each at 64 channels)
    norm_num_groups=8,
    # A pooled text embedding added to the time embedding conditions every ResNet globally (family, sides,
    # colours); cross-attention alone (at 8x8) learned the left/right binding unreliably in this budget.
    addition_embed_type="text",
    addition_embed_type_num_heads=4,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    timestep_spacing="trailing",
)


@dataclass
class ToyModel:
    """Everything needed to sample the toy model with plain diffusers code."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    scheduler_config: dict
    image_size: int = IMAGE_SIZE
    info: dict = field(default_factory=dict)  # training.json (settings, seed, measured compliance)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def make_scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)


def build_unet(seed: int | None = 0):
    from diffusers import UNet2DConditionModel

    if seed is None:
        return UNet2DConditionModel(**UNET_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**UNET_CONFIG)


def with_pooled_text(model: ToyModel, seed: int = 0) -> ToyModel:
    """``model`` with the pooled-text embedding of :data:`UNET_CONFIG` grown onto a UNet saved without it.

    The new embedding's output LayerNorm starts with weight and bias zero, so it adds exactly 0 to the time
    embedding: the grown model samples bit for bit as ``model`` until training moves that gate (as a zero-initialised
    ControlNet branch does). Its other layers are initialised from ``seed``.
    """
    if model.unet.config.get("addition_embed_type") == UNET_CONFIG["addition_embed_type"]:
        return model
    from diffusers import UNet2DConditionModel

    config = {**unet_config_of(model), "addition_embed_type": UNET_CONFIG["addition_embed_type"],
              "addition_embed_type_num_heads": UNET_CONFIG["addition_embed_type_num_heads"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = UNet2DConditionModel(**config)
    missing, unexpected = grown.load_state_dict(model.unet.state_dict(), strict=False)
    if unexpected or any(not key.startswith("add_embedding.") for key in missing):
        raise ValueError(f"the UNet does not match the toy architecture: missing {missing[:3]}, unexpected {unexpected[:3]}")
    torch.nn.init.zeros_(grown.add_embedding.norm2.weight)
    torch.nn.init.zeros_(grown.add_embedding.norm2.bias)
    grown.to(device=model.device).requires_grad_(False).eval()
    if model.dtype != torch.float32:
        grown.to(dtype=model.dtype)
    return ToyModel(grown, model.text_encoder, model.tokenizer, model.scheduler_config, model.image_size, model.info)


def new_toy_model(seed: int = 0) -> ToyModel:
    """A randomly initialised (untrained) toy model."""
    return ToyModel(build_unet(seed), build_text_encoder(seed + 1), tokenize, dict(SCHEDULER_CONFIG))


def unet_config_of(model: ToyModel) -> dict:
    """The UNet's own values of the :data:`UNET_CONFIG` keys: weights trained under an earlier config (e.g. without
    the pooled-text embedding) save the config they were built with, not today's default."""
    return {key: model.unet.config[key] for key in UNET_CONFIG}


def save_toy_model(model: ToyModel, out_dir: str | Path, info: dict | None = None, dtype=torch.float16) -> Path:
    """Write fp16 safetensors plus configs (and ``training.json`` when ``info`` is given)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, fill: Callable[[Path], None]) -> None:
        part = out / f".{name}.part"  # written whole, then renamed: a crash never leaves half a file
        fill(part)
        os.replace(part, out / name)

    for name, module in (("unet", model.unet), ("text_encoder", model.text_encoder)):
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
        write(f"{name}.safetensors", lambda path, state=state: save_file(state, str(path)))
    texts = {"unet_config.json": unet_config_of(model), "text_encoder_config.json": TEXT_ENCODER_CONFIG,
             "scheduler_config.json": model.scheduler_config}
    if info is not None:
        texts["training.json"] = info
    for name, value in texts.items():
        write(name, lambda path, value=value: path.write_text(json.dumps(value, indent=2) + "\n"))
    return out


def load_toy_model(device="cpu", dtype: torch.dtype = torch.float32, weights_dir: str | Path | None = None) -> ToyModel:
    """Load the shipped (or a given) toy model, frozen and in eval mode."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    if not (root / "unet.safetensors").is_file():
        raise FileNotFoundError(f"weights_dir must hold unet.safetensors and text_encoder.safetensors, none in {root}")
    unet_config = json.loads((root / "unet_config.json").read_text())
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict({k: v.float() for k, v in load_file(str(root / "unet.safetensors")).items()})
    te_config = json.loads((root / "text_encoder_config.json").read_text())
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_config))
    text_encoder.load_state_dict({k: v.float() for k, v in load_file(str(root / "text_encoder.safetensors")).items()}, strict=False)
    scheduler_config = json.loads((root / "scheduler_config.json").read_text())
    info_path = root / "training.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    for module in (unet, text_encoder):
        module.requires_grad_(False).eval().to(device=device)
        if dtype != torch.float32:
            module.to(dtype=dtype)
    return ToyModel(unet, text_encoder, tokenize, scheduler_config, int(unet_config["sample_size"]), info)


@torch.no_grad()
def encode_prompts(model: ToyModel, prompts: Sequence[str] | str) -> torch.Tensor:
    """``encoder_hidden_states`` [B, L, D] (model dtype/device); ``encode_prompts(model, "")`` is the CFG negative."""
    if isinstance(prompts, str):
        prompts = [prompts]
    states = encode_tokens(model.text_encoder, model.tokenizer(list(prompts)))
    return states.to(model.dtype)


def negative_embedding(model: ToyModel, batch: int = 1) -> torch.Tensor:
    """The empty-prompt embedding [batch, L, D] used as the unconditional branch of CFG."""
    return encode_prompts(model, [""]).expand(batch, -1, -1)


def images_to_model(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1] -> [B, 3, H, W] in [-1, 1]."""
    return images.permute(0, 3, 1, 2) * 2.0 - 1.0


def images_from_model(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in model space -> [B, H, W, 3] float32 in [0, 1] (clamped)."""
    return ((x.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


@torch.no_grad()
def sample(model: ToyModel, prompts: Sequence[str], *, seed: int | Sequence[int] = 0, steps: int = 20, cfg: float = 4.0,
           eta: float = 0.0, batch_size: int = 64) -> torch.Tensor:
    """Plain diffusers DDIM sampling with CFG; returns images [B, H, W, 3] in [0, 1].

    ``seed``: an int (image i gets initial noise from ``torch.Generator().manual_seed(seed + i)``) or one
    seed per prompt. The noise is drawn on the CPU in float32, so results do not depend on the device.
    """
    prompts = list(prompts)
    steps = check_int("steps", steps, 1, 1000)
    cfg = check_float("cfg", cfg, 0.0, 50.0)
    eta = check_float("eta", eta, 0.0, 1.0)
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise ValueError(f"seed must be an int or one seed per prompt ({len(prompts)}), got {len(seeds)}")
    size = model.image_size
    outs = []
    for start in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
        gens = [torch.Generator().manual_seed(int(s)) for s in chunk_seeds]
        x = torch.stack([torch.randn(3, size, size, generator=g) for g in gens]).to(model.device, model.dtype)
        cond = encode_prompts(model, chunk)
        uncond = negative_embedding(model, len(chunk))
        scheduler = model.make_scheduler()
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            eps = model.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + cfg * (eps_c - eps_u)
            if eta > 0:
                noise = torch.stack([torch.randn(3, size, size, generator=g) for g in gens]).to(model.device, model.dtype)
                x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
            else:
                x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        outs.append(images_from_model(x).cpu())
    return torch.cat(outs)


def measure_compliance(model: ToyModel, prompts: Sequence[str], *, seed: int = 0, steps: int = 20, cfg: float = 4.0,
                       batch_size: int = 64) -> dict:
    """Sample the prompts and judge them with the pixel verifiers: mean compliance, score, per-family rates."""
    from .verifiers import verify

    images = sample(model, prompts, seed=seed, steps=steps, cfg=cfg, batch_size=batch_size)
    verdict = verify(images, prompts)
    out = {
        "n": len(prompts),
        "compliance": float(verdict.compliant.float().mean()),
        "score": float(verdict.score.mean()),
        "present": float(verdict.present.float().mean()),
        "compliant": [bool(c) for c in verdict.compliant],
    }
    for fam in sorted(set(verdict.families)):
        idx = [i for i, f in enumerate(verdict.families) if f == fam]
        out[f"compliance_{fam}"] = float(verdict.compliant[idx].float().mean())
        out[f"present_{fam}"] = float(verdict.present[idx].float().mean())
    return out
