"""HPSv2 / HPSv2.1 (Wu et al. 2023): open_clip ViT-H-14 fine-tuned on human preference pairs.

The architecture is unchanged from open_clip's ViT-H-14, so the released checkpoint
(``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``: ``{"state_dict": {...}}``, plain tensors) loads
straight into open_clip's model; the ``hpsv2`` pip package is not needed (it insists on hub downloads).
The score is HPSv2's: the raw cosine of unit image and text embeddings, no logit scale,

    score_i = cos(E_img(x_i), E_txt(c_i))      (typically 0.20-0.35).

Preprocessing is resize-shorter-side + centre-crop to 224 with CLIP's mean/std; for square images this is
the same as HPSv2's own evaluation transform.
"""

from __future__ import annotations

from .clip_score import CLIPScore
from .openclip_embedder import load_openclip


def load_hpsv2(checkpoint: str, model_name: str = "ViT-H-14", config_file: str | None = None, device="auto",
               dtype="auto", max_batch: int = 16) -> CLIPScore:
    embedder = load_openclip(checkpoint, model_name, config_file, device, dtype, max_batch, what="HPSv2")
    return CLIPScore(embedder, scale=1.0, name="hpsv2")
