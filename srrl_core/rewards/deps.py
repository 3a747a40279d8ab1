"""Lazy imports of optional heavy dependencies, with an error that says what to install."""

from __future__ import annotations

import importlib


def require(module: str, pip_name: str, purpose: str):
    """Import ``module`` or raise ImportError naming the pip package that provides it.

    Heavy libraries (open_clip, transformers, rapidocr) are imported only when a backend that needs
    them is built, so ``import srrl_core.rewards`` stays cheap and works without them.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the Python package '{pip_name}' (import name '{module}'), which is not installed: "
            f"run `pip install {pip_name}` in the Python environment that runs ComfyUI/srrl_core ({error})"
        ) from error
