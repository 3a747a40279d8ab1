"""ComfyUI-SRRL's standalone core: Self-Reflective RL (arXiv 2505.22407) for diffusion models.

Subpackages: ``sampling`` (the reflective engine), ``adapters`` (diffusers models as denoisers), ``rewards``,
``training`` and ``toyworld``. Nothing here imports ComfyUI.
"""

__version__ = "0.1.0"
