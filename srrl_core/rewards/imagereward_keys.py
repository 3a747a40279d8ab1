"""ImageReward's checkpoint in terms of transformers' BLIP modules: key mapping and config inference.

ImageReward (Xu et al. 2023) = BLIP's ViT-L/16 image encoder + BLIP's BERT-base text encoder with
cross-attention to the image tokens + an MLP on the text [CLS] feature. ``ImageReward.pt`` is a flat state
dict (plain tensors) with three groups of keys; this module maps them onto ``BlipVisionModel`` and
``BlipTextModel`` (transformers), whose computations are the same as BLIP's own modules:

ImageReward key (prefix ``blip.visual_encoder.``)   ->  BlipVisionModel key
    cls_token                                     ->  embeddings.class_embedding
    pos_embed                                     ->  embeddings.position_embedding
    patch_embed.proj.{weight,bias}                ->  embeddings.patch_embedding.{weight,bias}
    blocks.{i}.norm1.*                            ->  encoder.layers.{i}.layer_norm1.*
    blocks.{i}.attn.qkv.*                         ->  encoder.layers.{i}.self_attn.qkv.*
    blocks.{i}.attn.proj.*                        ->  encoder.layers.{i}.self_attn.projection.*
    blocks.{i}.norm2.*                            ->  encoder.layers.{i}.layer_norm2.*
    blocks.{i}.mlp.fc{1,2}.*                      ->  encoder.layers.{i}.mlp.fc{1,2}.*
    norm.*                                        ->  post_layernorm.*
ImageReward key (prefix ``blip.text_encoder.``)     ->  BlipTextModel key: the same name without the prefix
    (BERT naming: embeddings.{word,position}_embeddings, embeddings.LayerNorm,
     encoder.layer.{i}.{attention,crossattention}.{self.{query,key,value},output.{dense,LayerNorm}},
     encoder.layer.{i}.intermediate.dense, encoder.layer.{i}.output.{dense,LayerNorm});
    the buffer embeddings.position_ids is dropped.
ImageReward key (prefix ``mlp.``)                    ->  the reward head: layers.{0,2,4,6,7}.{weight,bias}
Ignored: every other key (``blip.vision_proj``, ``blip.text_proj``: BLIP's contrastive projections, unused).

Sizes are read from tensor shapes. Head counts are not stored in weights: both towers use 64-wide heads
(ViT-L: 1024 / 16, BERT-base: 768 / 12), so heads = width / 64 unless given. LayerNorm eps: 1e-6 in
BLIP's ViT, 1e-12 in BERT; activations: exact GELU in both.
"""

from __future__ import annotations

import re

import torch

VISION, TEXT, HEAD = "blip.visual_encoder.", "blip.text_encoder.", "mlp."

_VISION_RULES = [
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
]


def _map_vision_key(key: str) -> str:
    for pattern, target in _VISION_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    raise ValueError(f"ImageReward checkpoint: unknown image-encoder key {VISION + key!r}")


def split_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """ImageReward state dict -> (BlipVisionModel state, BlipTextModel state, head state), keys renamed."""
    vision, text, head = {}, {}, {}
    for key, value in state.items():
        if key.startswith(VISION):
            vision[_map_vision_key(key[len(VISION):])] = value
        elif key.startswith(TEXT):
            if key != TEXT + "embeddings.position_ids":
                text[key[len(TEXT):]] = value
        elif key.startswith(HEAD):
            head[key[len(HEAD):]] = value
    for part, prefix in ((vision, VISION), (text, TEXT), (head, HEAD)):
        if not part:
            raise ValueError(f"ImageReward checkpoint has no '{prefix}*' keys; is this ImageReward.pt? "
                             f"(first keys: {list(state)[:5]})")
    return vision, text, head


def _count_layers(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def vision_config_kwargs(vision: dict, heads: int | None = None) -> dict:
    """BlipVisionConfig arguments for a mapped image-encoder state dict."""
    hidden = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    return dict(hidden_size=hidden, patch_size=patch, image_size=grid * patch,
                num_hidden_layers=_count_layers(vision, r"encoder\.layers\.(\d+)\."),
                intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
                num_attention_heads=heads or max(1, hidden // 64), layer_norm_eps=1e-6, hidden_act="gelu",
                attention_dropout=0.0)


def text_config_kwargs(text: dict, heads: int | None = None) -> dict:
    """BlipTextConfig arguments for a text-encoder state dict (cross-attention built via is_decoder=True)."""
    vocab, hidden = text["embeddings.word_embeddings.weight"].shape
    return dict(vocab_size=vocab, hidden_size=hidden,
                max_position_embeddings=text["embeddings.position_embeddings.weight"].shape[0],
                num_hidden_layers=_count_layers(text, r"encoder\.layer\.(\d+)\."),
                intermediate_size=text["encoder.layer.0.intermediate.dense.weight"].shape[0],
                encoder_hidden_size=text["encoder.layer.0.crossattention.self.key.weight"].shape[1],
                num_attention_heads=heads or max(1, hidden // 64), layer_norm_eps=1e-12, hidden_act="gelu",
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, is_decoder=True, pad_token_id=0,
                bos_token_id=None, sep_token_id=None, eos_token_id=None)
