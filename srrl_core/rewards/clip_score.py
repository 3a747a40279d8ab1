"""CLIP score: how well an image matches its prompt according to a CLIP dual encoder.

    score_i = scale * cos(E_img(x_i), E_txt(c_i))

with unit-norm embeddings, so with the default ``scale = 1`` scores lie in [-1, 1] (typically 0.15-0.40
for real images). This is the SRRL reference reward (open_clip ViT-H-14 laion2B-s32B-b79K, raw cosine).
``scale = 100`` gives the 0-100 range of the "CLIPScore" metric without its clipping at 0.

Two loaders: ``load_clip_openclip`` (open_clip checkpoint file + architecture name) and ``load_clip_hf``
(transformers CLIPModel folder).
"""

from __future__ import annotations

import torch

from ..validation import check_float
from .base import Reward
from .clip_embedder import ClipEmbedder
from .hf_clip_embedder import load_hf_clip
from .openclip_embedder import load_openclip


class CLIPScore(Reward):
    name = "clip"

    def __init__(self, embedder: ClipEmbedder, scale: float = 1.0, name: str | None = None):
        self.embedder = embedder
        self.scale = check_float("scale", scale, low=1e-6)
        if name:
            self.name = name

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.scale * self.embedder.cosine(images, prompts)


def load_clip_openclip(checkpoint: str, model_name: str = "ViT-H-14", config_file: str | None = None,
                       scale: float = 1.0, device="auto", dtype="auto", max_batch: int = 16) -> CLIPScore:
    """CLIP score from an open_clip checkpoint file (e.g. ViT-H-14 laion2B ``open_clip_pytorch_model.bin``)."""
    embedder = load_openclip(checkpoint, model_name, config_file, device, dtype, max_batch, what="CLIP score (open_clip)")
    return CLIPScore(embedder, scale)


def load_clip_hf(folder: str, tokenizer_folder: str | None = None, scale: float = 1.0, device="auto", dtype="auto",
                 max_batch: int = 16) -> CLIPScore:
    """CLIP score from a transformers CLIPModel folder (e.g. openai/clip-vit-large-patch14 saved locally)."""
    embedder = load_hf_clip(folder, tokenizer_folder, device, dtype, max_batch, what="CLIP score (transformers)")
    return CLIPScore(embedder, scale)
