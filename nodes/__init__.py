"""ComfyUI nodes of the pack: one node (or one family of small nodes) per module, names from names.py, logic in
srrl_core."""

from . import lora_trainer, reflective_sampler, renoise_guide, reward_family_loaders, reward_loader, reward_scorer

_MODULES = (reflective_sampler, renoise_guide, reward_family_loaders, reward_loader, reward_scorer, lora_trainer)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
