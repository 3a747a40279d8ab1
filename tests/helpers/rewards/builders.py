"""Tiny randomly initialised reward models written to disk in the real release formats.

Every builder writes files the way the real models ship (open_clip state dicts, transformers
``save_pretrained`` folders, ImageReward's flat ``.pt`` with BLIP key names, aesthetic heads), so tests and
the benchmark go through exactly the loading code users run. Sizes are parameters: tests use the smallest,
the benchmark larger "tiny but realistic" ones.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file


def _save_safetensors(state: dict, path: str) -> str:
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, path)
    return path


def openclip_config(folder: str, name: str = "srrl-tiny-clip", width: int = 32, layers: int = 1, image_size: int = 32,
                    patch_size: int = 16, embed_dim: int = 16) -> str:
    """An open_clip model config JSON (the file stem is the architecture name)."""
    config = {"embed_dim": embed_dim,
              "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch_size,
                             "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": max(1, width // 16),
                           "layers": layers}}
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def openclip_checkpoint(folder: str, seed: int = 0, hpsv2_format: bool = False, **size) -> tuple[str, str]:
    """(checkpoint, config) of a random open_clip model: .safetensors, or HPSv2's {"state_dict": {"module.*"}} .pt."""
    import open_clip

    config = openclip_config(folder, **size)
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(os.path.splitext(os.path.basename(config))[0], pretrained=None)
    state = model.state_dict()
    if hpsv2_format:
        path = os.path.join(folder, "HPS_v2_compressed.pt")
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
        return path, config
    return _save_safetensors(state, os.path.join(folder, "open_clip_model.safetensors")), config


def clip_tokenizer_files(folder: str) -> str:
    """A CLIPTokenizer folder (tokenizer.json ...) derived from the BPE table that ships inside open_clip."""
    import open_clip
    from tokenizers import decoders
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    simple = open_clip.SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # OpenAI's spelling
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({rename.get(k, k): v for k, v in simple.encoder.items()}, f)
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    tokenizer.backend_tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")  # as in OpenAI's tokenizer.json
    tokenizer.save_pretrained(folder)
    return folder


def hf_clip_folder(folder: str, seed: int = 0, width: int = 32, layers: int = 1, image_size: int = 32,
                   patch_size: int = 16, embed_dim: int = 16, with_tokenizer: bool = True) -> str:
    """A transformers CLIPModel folder: config.json + model.safetensors (+ tokenizer and preprocessor config)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                 num_attention_heads=max(1, width // 16))
    config = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, **tower),
                        vision_config=dict(image_size=image_size, patch_size=patch_size, **tower),
                        projection_dim=embed_dim)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    if with_tokenizer:
        clip_tokenizer_files(folder)
        CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                           ).save_pretrained(folder)
    return folder


def aesthetic_head(path: str, in_features: int, seed: int = 0, linear_probe: bool = False) -> str:
    """An aesthetic head in the improved-aesthetic-predictor layout (Linear at 0, 2, 4, 6, 7) or as a linear probe."""
    g = torch.Generator().manual_seed(seed)
    if linear_probe:
        return _save_safetensors({"weight": torch.randn(1, in_features, generator=g), "bias": torch.randn(1, generator=g)}, path)
    widths = [in_features, 16, 8, 4, 2, 1]
    state = {}
    for index, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        state[f"layers.{index}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
        state[f"layers.{index}.bias"] = torch.randn(n_out, generator=g) * 0.1
    return _save_safetensors(state, path)


def bert_vocab(folder: str) -> str:
    """A tiny bert-uncased style vocab.txt."""
    os.makedirs(folder, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "ball", "blue", "sign", "cat", "on", "the",
             "ramp", "##s", "dog"]
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(words) + "\n")
    return folder


def imagereward_checkpoint(path: str, seed: int = 0, vision_width: int = 64, text_width: int = 64, layers: int = 1,
                           image_size: int = 32, patch_size: int = 16, vocab_size: int = 18) -> str:
    """A random state dict with ImageReward.pt's key names and shape pattern (BLIP ViT + BERT with cross-attention
    + MLP head), written as a flat torch checkpoint like the real release."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def linear(prefix, n_out, n_in):
        return {f"{prefix}.weight": rnd(n_out, n_in), f"{prefix}.bias": rnd(n_out)}

    def norm(prefix, n):
        return {f"{prefix}.weight": 1 + rnd(n), f"{prefix}.bias": rnd(n)}

    v, t, grid = vision_width, text_width, image_size // patch_size
    state = {"blip.visual_encoder.cls_token": rnd(1, 1, v), "blip.visual_encoder.pos_embed": rnd(1, grid * grid + 1, v),
             "blip.visual_encoder.patch_embed.proj.weight": rnd(v, 3, patch_size, patch_size),
             "blip.visual_encoder.patch_embed.proj.bias": rnd(v)}
    for i in range(layers):
        b = f"blip.visual_encoder.blocks.{i}"
        state |= norm(f"{b}.norm1", v) | linear(f"{b}.attn.qkv", 3 * v, v) | linear(f"{b}.attn.proj", v, v)
        state |= norm(f"{b}.norm2", v) | linear(f"{b}.mlp.fc1", 4 * v, v) | linear(f"{b}.mlp.fc2", v, 4 * v)
    state |= norm("blip.visual_encoder.norm", v)
    e = "blip.text_encoder"
    state |= {f"{e}.embeddings.word_embeddings.weight": rnd(vocab_size, t, scale=1.0),
              f"{e}.embeddings.position_embeddings.weight": rnd(40, t, scale=0.5),
              f"{e}.embeddings.position_ids": torch.arange(40).unsqueeze(0)}
    state |= norm(f"{e}.embeddings.LayerNorm", t)
    for i in range(layers):
        b = f"{e}.encoder.layer.{i}"
        for kind, kv_width in (("attention", t), ("crossattention", v)):
            state |= linear(f"{b}.{kind}.self.query", t, t) | linear(f"{b}.{kind}.self.key", t, kv_width)
            state |= linear(f"{b}.{kind}.self.value", t, kv_width) | linear(f"{b}.{kind}.output.dense", t, t)
            state |= norm(f"{b}.{kind}.output.LayerNorm", t)
        state |= linear(f"{b}.intermediate.dense", 4 * t, t) | linear(f"{b}.output.dense", t, 4 * t)
        state |= norm(f"{b}.output.LayerNorm", t)
    widths = [t, 16, 8, 4, 2, 1]
    for index, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        state |= {f"mlp.layers.{index}.weight": rnd(n_out, n_in, scale=0.5), f"mlp.layers.{index}.bias": rnd(n_out)}
    state |= linear("blip.vision_proj", 8, v) | linear("blip.text_proj", 8, t)  # present in the release, unused
    torch.save(state, path)
    return path
