"""Connected components of binary masks, in plain torch (no scipy).

Every foreground pixel starts with its own flat index as label. Each round (1) takes the minimum label over
the pixel and its 4 neighbours that are also foreground, then (2) jumps pointers, label <- label[label]
(a label is the index of a pixel of the same component, so this follows the chain towards the component's
smallest index). Rounds repeat until nothing changes; each component then carries the index of its first
pixel. Rounds grow with the logarithm of a component's diameter for compact shapes, linearly in the worst
case (long thin spirals), and all images of a batch are labelled together.
"""

from __future__ import annotations

import torch


def label_components(mask: torch.Tensor) -> torch.Tensor:
    """Bool masks [B, H, W] -> labels [B, H, W] (long): -1 on background, one shared value per 4-connected component."""
    if mask.ndim != 3 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor [B, H, W], got {mask.dtype} {tuple(mask.shape)}")
    background = mask.numel()  # larger than every pixel index, so min() ignores it
    labels = torch.where(mask, torch.arange(mask.numel(), device=mask.device).view(mask.shape), background)
    while True:
        padded = torch.nn.functional.pad(labels, (1, 1, 1, 1), value=background)
        neighbours = torch.stack([padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]])
        new = torch.where(mask, torch.minimum(labels, neighbours.min(0).values), background)
        flat = torch.cat([new.flatten(), new.new_tensor([background])])
        new = torch.where(mask, flat[new], background)  # pointer jumping
        if torch.equal(new, labels):
            return torch.where(mask, labels, -1)
        labels = new


def component_areas(labels: torch.Tensor) -> list[torch.Tensor]:
    """For labels [B, H, W] from label_components: per image, the pixel count of each component."""
    return [torch.unique(image[image >= 0], return_counts=True)[1] for image in labels]
