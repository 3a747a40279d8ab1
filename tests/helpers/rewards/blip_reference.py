"""ImageReward's forward pass written directly from the math on ImageReward-named tensors.

Used to check numerically that mapping the checkpoint onto transformers' BLIP modules computes the same
function: pre-norm ViT (LayerNorm eps 1e-6) -> BERT with post-norm self- and cross-attention (eps 1e-12)
-> [CLS] -> affine head -> (h - mean) / std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _attention(q, k, v, heads, key_mask=None):
    b, n, d = q.shape
    def split(t):
        return t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)

    logits = split(q) @ split(k).transpose(-1, -2) / (d // heads) ** 0.5
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
    return (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)


def _lin(s, prefix, x):
    return F.linear(x, s[prefix + ".weight"], s[prefix + ".bias"])


def _ln(s, prefix, x, eps):
    return F.layer_norm(x, x.shape[-1:], s[prefix + ".weight"], s[prefix + ".bias"], eps)


def vit(s, pixels, layers, heads):
    p = "blip.visual_encoder."
    x = F.conv2d(pixels, s[p + "patch_embed.proj.weight"], s[p + "patch_embed.proj.bias"],
                 stride=s[p + "patch_embed.proj.weight"].shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([s[p + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + s[p + "pos_embed"]
    for i in range(layers):
        b = f"{p}blocks.{i}."
        h = _ln(s, b + "norm1", x, 1e-6)
        q, k, v = _lin(s, b + "attn.qkv", h).chunk(3, dim=-1)
        x = x + _lin(s, b + "attn.proj", _attention(q, k, v, heads))
        x = x + _lin(s, b + "mlp.fc2", F.gelu(_lin(s, b + "mlp.fc1", _ln(s, b + "norm2", x, 1e-6))))
    return _ln(s, p + "norm", x, 1e-6)


def bert_cls(s, ids, mask, image_tokens, layers, heads):
    p = "blip.text_encoder."
    x = s[p + "embeddings.word_embeddings.weight"][ids] + s[p + "embeddings.position_embeddings.weight"][:ids.shape[1]]
    x = _ln(s, p + "embeddings.LayerNorm", x, 1e-12)
    for i in range(layers):
        b = f"{p}encoder.layer.{i}."
        for kind, source, key_mask in (("attention", None, mask), ("crossattention", image_tokens, None)):
            kv = x if source is None else source
            ctx = _attention(_lin(s, f"{b}{kind}.self.query", x), _lin(s, f"{b}{kind}.self.key", kv),
                             _lin(s, f"{b}{kind}.self.value", kv), heads, key_mask)
            x = _ln(s, f"{b}{kind}.output.LayerNorm", _lin(s, f"{b}{kind}.output.dense", ctx) + x, 1e-12)
        ffn = _lin(s, b + "output.dense", F.gelu(_lin(s, b + "intermediate.dense", x)))
        x = _ln(s, b + "output.LayerNorm", ffn + x, 1e-12)
    return x[:, 0]


def imagereward_scores(s, pixels, ids, mask, layers, vision_heads, text_heads):
    feature = bert_cls(s, ids, mask, vit(s, pixels, layers, vision_heads), layers, text_heads)
    for index in (0, 2, 4, 6, 7):
        feature = _lin(s, f"mlp.layers.{index}", feature)
    return (feature.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
