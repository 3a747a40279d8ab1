"""A tiny CLIP-style text encoder on the real CLIP BPE vocabulary.

Token ids come from open_clip's ``SimpleTokenizer`` (``bpe_simple_vocab_16e6.txt.gz`` shipped inside
open_clip_torch, 49408 tokens,
start/end-of-text 49406/49407, zero padding) with a short context (32 tokens). The encoder is a
transformers ``CLIPTextModel`` with a tiny config (hidden 64, 2 layers, 4 heads); its
``last_hidden_state`` [B, L, 64] is the UNet's ``encoder_hidden_states``, as in Stable Diffusion.
It is trained jointly with the UNet during base training and frozen afterwards (the shipped weights).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
from transformers import CLIPTextConfig, CLIPTextModel

CONTEXT_LENGTH = 32
VOCAB_SIZE = 49408
SOT_TOKEN = 49406
EOT_TOKEN = 49407

TEXT_ENCODER_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=256,
    projection_dim=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=CONTEXT_LENGTH,
    hidden_act="quick_gelu",
    pad_token_id=0,
    bos_token_id=SOT_TOKEN,
    eos_token_id=EOT_TOKEN,
)


@lru_cache(maxsize=1)
def _tokenizer_module():
    """open_clip's ``tokenizer`` module. It is self-contained (ftfy, regex, torch), so when open_clip itself is
    not imported yet it is loaded on its own: importing the open_clip package pulls in timm and torchvision
    and costs seconds."""
    import importlib.util
    import sys

    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.tokenizer"]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the toy text encoder needs open_clip_torch (pip install open_clip_torch) for the CLIP BPE vocabulary")
    from pathlib import Path

    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_srrl_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def _tokenizer():
    return _tokenizer_module().SimpleTokenizer(context_length=CONTEXT_LENGTH)


@lru_cache(maxsize=4096)
def _tokenize_one(text: str) -> tuple[int, ...]:
    return tuple(_tokenizer()([text], context_length=CONTEXT_LENGTH)[0].tolist())


def tokenize(prompts: Sequence[str] | str, context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """CLIP BPE token ids [B, context_length] (SOT ... EOT, zero padded; long prompts are cut, EOT kept)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if context_length == CONTEXT_LENGTH:
        return torch.tensor([_tokenize_one(p) for p in prompts], dtype=torch.long)
    return _tokenizer()(list(prompts), context_length=context_length)


def build_text_encoder(seed: int | None = 0) -> CLIPTextModel:
    """A freshly initialised tiny CLIPTextModel (deterministic for a given seed)."""
    config = CLIPTextConfig(**TEXT_ENCODER_CONFIG)
    if seed is None:
        return CLIPTextModel(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)


def encode_tokens(text_encoder: CLIPTextModel, tokens: torch.Tensor) -> torch.Tensor:
    """``encoder_hidden_states`` [B, L, D] for token ids [B, L]."""
    param = next(text_encoder.parameters())
    return text_encoder(input_ids=tokens.to(param.device)).last_hidden_state
