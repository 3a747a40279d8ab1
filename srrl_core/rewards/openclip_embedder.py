"""open_clip dual encoders loaded from a local checkpoint file (never from a hub).

``load_openclip(checkpoint, model_name, config_file=None, device, dtype)``:
- ``model_name`` is an open_clip architecture (``ViT-H-14``, ``ViT-L-14-quickgelu``, ...), or the name of the
  architecture described by ``config_file``: an open_clip model config JSON ({"embed_dim", "vision_cfg",
  "text_cfg"}) whose file stem is the name. This is how fine-tuned or custom-size models are loaded.
- ``checkpoint`` is a ``.safetensors`` / ``.pt`` / ``.bin`` state dict (``{"state_dict": ...}`` wrappers and
  ``module.`` prefixes from DDP training, as in HPSv2's release, are accepted by open_clip's loader;
  ``.pt`` files are read with ``weights_only=True``).
Text is tokenised by open_clip's bundled BPE tokenizer (ships inside the package). Architectures whose text
tower needs a Hugging Face tokenizer are refused, since that tokenizer would be downloaded.
"""

from __future__ import annotations

import os

from .clip_embedder import ClipEmbedder
from .deps import require
from .files import require_file
from .runtime import cached_model, resolve_device, resolve_dtype


class OpenClipEmbedder(ClipEmbedder):
    def __init__(self, model, tokenizer, device, dtype, max_batch: int = 16):
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        super().__init__(device, dtype, size, model.visual.image_mean, model.visual.image_std, max_batch)
        self.model, self.tokenizer = model, tokenizer

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def _image_features(self, pixels):
        return self.model.encode_image(pixels)

    def _text_features(self, prompts):
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))


def load_openclip(checkpoint: str, model_name: str, config_file: str | None = None, device="auto", dtype="auto",
                  max_batch: int = 16, what: str = "open_clip model") -> OpenClipEmbedder:
    """Build (or reuse from the cache) an open_clip model with weights from the local ``checkpoint`` file."""
    open_clip = require("open_clip", "open_clip_torch", what)
    checkpoint = require_file(checkpoint, what, f"an open_clip state dict (.safetensors/.pt) for {model_name!r}")
    if config_file:
        config_file = require_file(config_file, what, "an open_clip model config .json")
        model_name = os.path.splitext(os.path.basename(config_file))[0]
        open_clip.add_model_config(config_file)
    if not isinstance(model_name, str) or ":" in model_name:
        raise ValueError(f"model_name must be a local open_clip architecture name such as 'ViT-H-14' "
                         f"(hub schemas like 'hf-hub:' are not allowed), got {model_name!r}")
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(f"model_name {model_name!r} is not an open_clip architecture; known: {', '.join(open_clip.list_models())}")
    if config["text_cfg"].get("hf_tokenizer_name"):
        raise ValueError(f"model_name {model_name!r} needs a Hugging Face tokenizer, which would be downloaded; "
                         "use an architecture with open_clip's built-in tokenizer (e.g. ViT-H-14, ViT-L-14)")
    _refuse_transformers_layout(checkpoint, what)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)

    def build():
        model = open_clip.create_model(model_name, pretrained=checkpoint, device="cpu", precision="fp32",
                                       pretrained_text=False, weights_only=True)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False), open_clip.get_tokenizer(model_name)

    model, tokenizer = cached_model("open_clip", checkpoint, device, dtype, build, extra=(model_name,))
    return OpenClipEmbedder(model, tokenizer, device, dtype, max_batch)


def _refuse_transformers_layout(checkpoint: str, what: str) -> None:
    # ComfyUI's clip_vision files are often transformers CLIP weights without their config.json; open_clip
    # would fail on them with a long key-mismatch error, so say what to do instead.
    if not checkpoint.endswith(".safetensors"):
        return
    from safetensors import safe_open

    with safe_open(checkpoint, framework="pt") as f:
        if any(key.startswith("vision_model.") for key in f.keys()):
            raise ValueError(f"{what}: {checkpoint!r} holds transformers CLIP weights (keys 'vision_model.*'), not an "
                             "open_clip checkpoint; put it in a folder with its config.json (e.g. that of "
                             "openai/clip-vit-large-patch14) and choose that folder's model.safetensors")
