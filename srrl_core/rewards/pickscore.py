"""PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

    score_i = exp(t) * cos(E_img(x_i), E_txt(c_i))

where exp(t) is the model's learned logit scale (about 100), exactly the logit PickScore's reference code
computes before its softmax over candidates. Scores are typically 18-23.

Weights: the transformers folder of yuvalkirstain/PickScore_v1 (config.json + model.safetensors). Its
tokenizer and preprocessor are those of laion/CLIP-ViT-H-14-laion2B-s32B-b79K: put them in the same folder
or pass that folder as ``tokenizer_folder``.
"""

from __future__ import annotations

import torch

from .base import Reward
from .clip_embedder import ClipEmbedder
from .hf_clip_embedder import load_hf_clip


class PickScore(Reward):
    name = "pickscore"

    def __init__(self, embedder: ClipEmbedder):
        self.embedder = embedder

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.embedder.logit_scale * self.embedder.cosine(images, prompts)


def load_pickscore(folder: str, tokenizer_folder: str | None = None, device="auto", dtype="auto",
                   max_batch: int = 16) -> PickScore:
    return PickScore(load_hf_clip(folder, tokenizer_folder, device, dtype, max_batch, what="PickScore"))
