"""Toy physics world: procedural scenes with physical rules, pixel verifiers, and the built-in tiny base model.

Light imports (numpy/torch only) for scenes and verifiers; the model (diffusers, transformers, open_clip)
loads on first use of its names.
"""

from __future__ import annotations

from .scenes import (FAMILIES, SPLITS, Scene, generate, prompt_family, render_batch, render_scene, sample_prompts,
                     sample_scene, sample_scenes)
from .verifiers import ToyPhysicsReward, Verdict, compliance, parse_prompt, verify

_MODEL_NAMES = {
    "ToyModel", "load_toy_model", "encode_prompts", "negative_embedding", "sample", "measure_compliance",
    "images_to_model", "images_from_model", "new_toy_model", "save_toy_model", "WEIGHTS_DIR", "UNET_CONFIG",
    "SCHEDULER_CONFIG",
}
_TEXT_NAMES = {"tokenize", "build_text_encoder", "encode_tokens", "CONTEXT_LENGTH"}

__all__ = sorted({
    "FAMILIES", "SPLITS", "Scene", "generate", "prompt_family", "render_batch", "render_scene", "sample_prompts",
    "sample_scene", "sample_scenes", "ToyPhysicsReward", "Verdict", "compliance", "parse_prompt", "verify",
} | _MODEL_NAMES | _TEXT_NAMES)


def __getattr__(name: str):
    if name in _MODEL_NAMES:
        from . import model

        return getattr(model, name)
    if name in _TEXT_NAMES:
        from . import text_encoder

        return getattr(text_encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
