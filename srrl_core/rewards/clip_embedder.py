"""A CLIP-like dual encoder seen as two functions onto the unit sphere.

CLIP score, PickScore, HPSv2 and the aesthetic predictor all start from unit-norm image embeddings
u_i = f(x_i) / |f(x_i)| and (except the aesthetic head) unit-norm text embeddings v_j = g(c_j) / |g(c_j)|.
Subclasses wrap one library (open_clip, transformers) and provide the raw towers; this class does the
preprocessing, chunking, dtype handling and normalisation once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F

from .preprocess import CLIP_MEAN, CLIP_STD, chunks, clip_pixels


class ClipEmbedder(ABC):
    """Unit-norm image and text embeddings from a loaded dual encoder (model already on device, in dtype)."""

    TEXT_CACHE = 4096

    def __init__(self, device: torch.device, dtype: torch.dtype, image_size: int,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, max_batch: int = 16):
        self.device, self.dtype = device, dtype
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.max_batch = max_batch
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """exp(learned temperature parameter): the factor CLIP multiplies cosines by to get logits."""

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [N, 3, S, S] (device, dtype) -> projected features [N, D]."""

    @abstractmethod
    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> projected features [N, D] on device."""

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, H, W, 3] in [0, 1] -> unit vectors [B, D] (float32, on device)."""
        out = []
        for part in chunks(images.shape[0], self.max_batch):
            pixels = clip_pixels(images[part].to(self.device), self.image_size, self.mean, self.std)
            out.append(self._image_features(pixels.to(self.dtype)).float())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """One unit vector per prompt [B, D]. Each distinct prompt is encoded once and remembered (the last
        ``TEXT_CACHE`` prompts): rollouts score the same prompt over and over, rounds and branches alike."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._texts]
        for part in chunks(len(missing), self.max_batch):
            feats = F.normalize(self._text_features(missing[part]).float(), dim=-1)
            self._texts.update(zip(missing[part], feats))
        embeddings = torch.stack([self._texts[p] for p in prompts])
        for prompt in prompts:
            self._texts.move_to_end(prompt)
        while len(self._texts) > self.TEXT_CACHE:
            self._texts.popitem(last=False)
        return embeddings

    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """cos(image_i, prompt_i) for each pair: [B] in [-1, 1]."""
        return (self.encode_images(images) * self.encode_texts(prompts)).sum(-1)
