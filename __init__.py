"""ComfyUI entry point of ComfyUI-SRRL: registers the SRRL nodes (see nodes/)."""

import os
import sys

# srrl_core is a standalone library next to this file; make it importable without installing it. Appended, not
# prepended, so the host's own top-level modules (ComfyUI has a `nodes` module too) keep precedence.
_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
