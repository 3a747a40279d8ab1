"""CLIP-style image preprocessing on batched tensors (no PIL round trip).

For images [B, H, W, 3] in [0, 1]:
    1. resize so the shorter side equals ``size`` (bicubic, antialiased, like PIL's resize),
    2. centre-crop ``size`` x ``size``,
    3. clamp to [0, 1] (bicubic overshoots; PIL clamps when it writes 8-bit pixels),
    4. normalise per channel: (x - mean) / std.
Returns [B, 3, size, size]. Matches torchvision's Resize(size, BICUBIC) + CenterCrop(size) + Normalize
up to 8-bit rounding, which is what CLIP, PickScore, HPSv2 and ImageReward use for square inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: Mean and std of OpenAI CLIP's training images (also used by open_clip's LAION models and by BLIP/ImageReward).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Images [B, H, W, 3] in [0, 1] -> normalised pixels [B, 3, size, size] (float32, same device)."""
    x = images.permute(0, 3, 1, 2).float()
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top:top + size, left:left + size].clamp(0, 1)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def chunks(count: int, size: int):
    """Slices covering range(count) in pieces of at most ``size`` (bounds memory for big batches)."""
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))
