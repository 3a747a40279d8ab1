"""ImageReward (Xu et al. 2023), loaded from local files without the ``image-reward`` pip package.

    f_i   = BERT_[CLS](tokens(c_i) | cross-attention to ViT(x_i))     (text features conditioned on the image)
    score = (MLP(f_i) - 0.16717362830052426) / 1.0333394966054072     (typically -2 .. 2)

The constants are ImageReward's published normalisation of its raw head output. Images: resize shorter side
+ centre crop to the ViT's input size (224), CLIP mean/std. Text: BERT uncased WordPiece, padded/truncated
to 35 tokens, as ImageReward does.

Files: ``ImageReward.pt`` (THUDM/ImageReward; plain tensors, read with weights_only=True) and a folder with
the ``bert-base-uncased`` ``vocab.txt`` (a path to the vocab.txt itself also works). Key mapping onto
transformers' BLIP modules: see imagereward_keys.py.
"""

from __future__ import annotations

import os

import torch

from .aesthetic import LinearStack
from .base import Reward
from .deps import require
from .files import load_state_dict, require_file
from .imagereward_keys import split_checkpoint, text_config_kwargs, vision_config_kwargs
from .preprocess import CLIP_MEAN, CLIP_STD, chunks, clip_pixels
from .runtime import cached_model, resolve_device, resolve_dtype

MEAN, STD, MAX_TOKENS = 0.16717362830052426, 1.0333394966054072, 35


class ImageReward(Reward):
    name = "imagereward"

    def __init__(self, vision, text, head: LinearStack, tokenizer, device, dtype, max_batch: int = 16):
        self.vision, self.text, self.head, self.tokenizer = vision, text, head, tokenizer
        self.device, self.dtype, self.max_batch = device, dtype, max_batch
        self.image_size = vision.config.image_size

    @torch.no_grad()
    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        out = []
        for part in chunks(len(prompts), self.max_batch):
            pixels = clip_pixels(images[part].to(self.device), self.image_size, CLIP_MEAN, CLIP_STD).to(self.dtype)
            image_tokens = self.vision(pixel_values=pixels).last_hidden_state
            tokens = self.tokenizer(prompts[part], padding="max_length", truncation=True, max_length=MAX_TOKENS,
                                    return_tensors="pt")
            features = self.text(input_ids=tokens["input_ids"].to(self.device),
                                 attention_mask=tokens["attention_mask"].to(self.device),
                                 encoder_hidden_states=image_tokens, is_decoder=False).last_hidden_state[:, 0]
            out.append(self.head(features.float()))
        return (torch.cat(out) - MEAN) / STD


def load_imagereward(checkpoint: str, tokenizer: str, device="auto", dtype="auto", max_batch: int = 16,
                     vision_heads: int | None = None, text_heads: int | None = None) -> ImageReward:
    """ImageReward from ``ImageReward.pt`` and a folder holding bert-base-uncased's ``vocab.txt``."""
    transformers = require("transformers", "transformers", "ImageReward")
    checkpoint = require_file(checkpoint, "ImageReward", "ImageReward.pt (THUDM/ImageReward)")
    if not tokenizer:
        raise ValueError("tokenizer: give the folder holding bert-base-uncased's vocab.txt (or that vocab.txt)")
    tokenizer_folder = os.path.dirname(tokenizer) if os.path.isfile(tokenizer) else tokenizer
    require_file(os.path.join(tokenizer_folder, "vocab.txt"), "ImageReward tokenizer", "bert-base-uncased's vocab.txt")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)

    def build():
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        vision_sd, text_sd, head_sd = split_checkpoint(load_state_dict(checkpoint))
        vision = BlipVisionModel(transformers.BlipVisionConfig(**vision_config_kwargs(vision_sd, vision_heads)))
        text = BlipTextModel(transformers.BlipTextConfig(**text_config_kwargs(text_sd, text_heads)), add_pooling_layer=False)
        vision.load_state_dict(vision_sd, strict=True)
        text.load_state_dict(text_sd, strict=True)
        bert = transformers.BertTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        return (vision.to(device=device, dtype=dtype).eval().requires_grad_(False),
                text.to(device=device, dtype=dtype).eval().requires_grad_(False),
                LinearStack(head_sd, source=f"{checkpoint} (mlp.*)").to(device), bert)

    parts = cached_model("imagereward", checkpoint, device, dtype, build,
                         extra=(os.path.abspath(tokenizer_folder), vision_heads, text_heads))
    return ImageReward(*parts, device=device, dtype=dtype, max_batch=max_batch)
