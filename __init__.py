"""ComfyUI entry point of ComfyUI-SRRL: registers the SRRL nodes (see nodes/)."""

import os
import sys

# srrl_core is a standalone library next to this file; make it importable without installing it. Appended, not
# prepended, so the host's own top-level modules (ComfyUI has a `nodes` module too) keep precedence.
_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.reward_loading import register_model_folders

try:
    import folder_paths  # noqa: F401  (present when a ComfyUI host loads the pack)
except ImportError:  # imported by tools or pytest outside a host: no model folders to register
    pass
else:
    register_model_folders()  # models/srrl_rewards, before the host lists model files

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
