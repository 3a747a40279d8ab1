"""LAION aesthetic predictor: a linear head on unit-norm CLIP ViT-L/14 image embeddings.

    score_i = head(u_i),   u_i = E_img(x_i) / |E_img(x_i)|,   roughly 1-10 ("how much people like it").

The head file (``.safetensors``, or a ``.pth`` state dict read with weights_only=True) has one of two
key layouts:

- improved-aesthetic-predictor (``sac+logos+ava1-l14-linearMSE``): ``layers.{i}.weight`` [out, in] and
  ``layers.{i}.bias`` [out] for the Linear modules of its ``nn.Sequential`` (indices 0, 2, 4, 6, 7 with
  widths 768 -> 1024 -> 128 -> 64 -> 16 -> 1; the odd indices are Dropout, and the model has no
  activations), applied in index order: head(u) = W_k(... (W_1 u + b_1) ...) + b_k.
- LAION-Aesthetics v1 linear probe (``sa_0_4_vit_l_14_linear``): ``weight`` [1, D] and ``bias`` [1].

The embedding model is CLIP ViT-L/14 (OpenAI weights), given as a transformers folder
(openai/clip-vit-large-patch14; a ``model.safetensors`` chosen inside such a folder also works) or as an
open_clip state-dict checkpoint with ``clip_model_name="ViT-L-14-quickgelu"``.
"""

from __future__ import annotations

import os
import re

import torch

from .base import Reward
from .clip_embedder import ClipEmbedder
from .files import load_state_dict, model_folder_of, require_file
from .hf_clip_embedder import load_hf_clip
from .openclip_embedder import load_openclip

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


class LinearStack(torch.nn.Module):
    """Affine maps applied in order, read from a state dict in one of the two layouts above."""

    def __init__(self, state: dict[str, torch.Tensor], source: str = "head"):
        super().__init__()
        if set(state) == {"weight", "bias"}:
            pairs = [(state["weight"], state["bias"])]
        else:
            found = {}
            for key, value in state.items():
                match = _LAYER_KEY.match(key)
                if not match:
                    raise ValueError(f"{source}: unexpected key {key!r}; expected 'layers.<i>.weight/bias' "
                                     f"(improved-aesthetic-predictor) or 'weight'/'bias' (linear probe)")
                found.setdefault(int(match.group(1)), {})[match.group(2)] = value
            pairs = [(found[i].get("weight"), found[i].get("bias")) for i in sorted(found)]
        if not pairs or any(w is None or b is None or w.ndim != 2 or b.shape != w.shape[:1] for w, b in pairs):
            raise ValueError(f"{source}: every layer needs weight [out, in] and bias [out]")
        for (w1, _), (w2, _) in zip(pairs, pairs[1:]):
            if w2.shape[1] != w1.shape[0]:
                raise ValueError(f"{source}: layer widths do not chain ({tuple(w1.shape)} then {tuple(w2.shape)})")
        if pairs[-1][0].shape[0] != 1:
            raise ValueError(f"{source}: the last layer must have one output, got {pairs[-1][0].shape[0]}")
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(w.float(), requires_grad=False) for w, _ in pairs])
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(b.float(), requires_grad=False) for _, b in pairs])

    @property
    def in_features(self) -> int:
        return self.weights[0].shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for weight, bias in zip(self.weights, self.biases):
            x = torch.nn.functional.linear(x, weight, bias)
        return x.squeeze(-1)


class AestheticScore(Reward):
    name = "aesthetic"

    def __init__(self, embedder: ClipEmbedder, head: LinearStack):
        self.embedder, self.head = embedder, head.to(embedder.device)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        embedding = self.embedder.encode_images(images)  # the prompt plays no part in this reward
        if embedding.shape[-1] != self.head.in_features:
            raise ValueError(f"aesthetic head expects {self.head.in_features}-d CLIP embeddings but the CLIP model "
                             f"gives {embedding.shape[-1]}-d; use CLIP ViT-L/14 (768-d) for the LAION heads")
        with torch.no_grad():
            return self.head(embedding)


def load_aesthetic(head: str, clip: str, clip_model_name: str = "ViT-L-14-quickgelu",
                   clip_config_file: str | None = None, device="auto", dtype="auto", max_batch: int = 16) -> AestheticScore:
    """Aesthetic score from a head file and a CLIP ViT-L/14 (transformers folder or open_clip checkpoint)."""
    head_path = require_file(head, "aesthetic head", "an MLP head (.safetensors) such as sac+logos+ava1-l14-linearMSE")
    clip = model_folder_of(clip) if clip else clip
    if clip and os.path.isdir(clip):
        embedder = load_hf_clip(clip, None, device, dtype, max_batch, what="aesthetic CLIP", need_text=False)
    else:
        embedder = load_openclip(clip, clip_model_name, clip_config_file, device, dtype, max_batch, what="aesthetic CLIP")
    return AestheticScore(embedder, LinearStack(load_state_dict(head_path), source=head_path))
