"""transformers CLIPModel dual encoders loaded from a local folder (``save_pretrained`` layout).

The folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``). The tokenizer
(``tokenizer.json`` or ``vocab.json`` + ``merges.txt``) and ``preprocessor_config.json`` are read from
``tokenizer_folder`` when given, else from the model folder. PickScore, for instance, ships its weights
without a tokenizer: its tokenizer and preprocessing are those of laion/CLIP-ViT-H-14-laion2B-s32B-b79K.
Nothing is fetched from the hub (``local_files_only=True``).

Preprocessing comes from ``preprocessor_config.json`` (``crop_size``, ``image_mean``, ``image_std``; looked for
in the tokenizer folder, then the model folder) when present, else the vision config's ``image_size`` and CLIP's mean/std.
"""

from __future__ import annotations

import json
import os

import torch

from .clip_embedder import ClipEmbedder
from .deps import require
from .files import require_folder
from .preprocess import CLIP_MEAN, CLIP_STD
from .runtime import cached_model, resolve_device, resolve_dtype

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


class HFClipEmbedder(ClipEmbedder):
    def __init__(self, model, tokenizer, device, dtype, image_size, mean, std, max_batch: int = 16):
        super().__init__(device, dtype, image_size, mean, std, max_batch)
        self.model, self.tokenizer = model, tokenizer

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def _image_features(self, pixels):
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, prompts):
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return _pooled(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                    attention_mask=tokens["attention_mask"].to(self.device)))


def _pooled(output) -> torch.Tensor:
    # transformers 4.x returns the projected features; 5.x returns an output whose pooler_output holds them
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _preprocess_config(folders: tuple[str, ...], default_size: int) -> tuple[int, tuple, tuple]:
    paths = [os.path.join(f, "preprocessor_config.json") for f in folders]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        return default_size, CLIP_MEAN, CLIP_STD
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    crop = cfg.get("crop_size", default_size)
    size = crop.get("height", default_size) if isinstance(crop, dict) else int(crop)
    return size, tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))


def load_hf_clip(folder: str, tokenizer_folder: str | None = None, device="auto", dtype="auto", max_batch: int = 16,
                 what: str = "transformers CLIP model", need_text: bool = True) -> HFClipEmbedder:
    """Build (or reuse from the cache) a transformers CLIPModel from local folders.

    ``need_text=False`` (image-only uses such as the aesthetic head) skips the tokenizer.
    """
    transformers = require("transformers", "transformers", what)
    folder = require_folder(folder, what, ("config.json",), WEIGHT_FILES)
    tokenizer_folder = tokenizer_folder or folder
    if need_text:
        require_folder(tokenizer_folder, f"{what} tokenizer", (), TOKENIZER_FILES)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)

    def build():
        model = transformers.CLIPModel.from_pretrained(folder, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True) if need_text else None
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False), tokenizer

    model, tokenizer = cached_model("hf_clip", folder, device, dtype, build, extra=(os.path.abspath(tokenizer_folder), need_text))
    size, mean, std = _preprocess_config((tokenizer_folder, folder), model.config.vision_config.image_size)
    return HFClipEmbedder(model, tokenizer, device, dtype, size, mean, std, max_batch)
