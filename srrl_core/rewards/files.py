"""Checks for user-given weight files and folders, and one reader for state dicts.

Errors name what was expected and where it was looked for, because the usual mistake is a file in the
wrong models folder.
"""

from __future__ import annotations

import os

import torch

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = ("convert it once, on a machine you trust, with: python -c \"import torch, safetensors.torch as s; "
                "s.save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')\"")


def refuse_pickle(path: str, what: str) -> None:
    """ValueError naming the file when ``path`` is a pickle-based weights file (they can run code when loaded)."""
    if str(path).lower().endswith(PICKLE_SUFFIXES):
        raise ValueError(f"{what}: {os.path.basename(path)!r} is a pickle-based weights file; only .safetensors "
                         f"weights are accepted here (pickle files can run code when loaded). To use it, {CONVERT_HINT}")


def check_safetensors(path: str, what: str) -> str:
    """``path`` if its safetensors header reads; else ValueError naming the file (empty, truncated, not safetensors)."""
    from safetensors import safe_open

    size = os.path.getsize(path)
    if size < 8:
        raise ValueError(f"{what}: {os.path.basename(path)!r} is empty or truncated ({size} bytes), not a .safetensors "
                         "file; download it again")
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except Exception as error:  # noqa: BLE001  (any unreadable header; the library only says "header too large")
        raise ValueError(f"{what}: {os.path.basename(path)!r} ({size} bytes) is not a readable .safetensors file "
                         f"({type(error).__name__}: {str(error)[:80]}); it may be truncated or corrupt, download it "
                         "again") from None
    return path


def require_file(path, what: str, expected: str) -> str:
    """Return ``path`` as a string if it is an existing file, else FileNotFoundError naming folder and file."""
    if not path or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what}: a weights file path is required ({expected}), got {path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        raise FileNotFoundError(f"{what}: file not found. Expected {expected} at {path!r} "
                                f"(searched folder {folder!r}; it {'exists' if os.path.isdir(folder) else 'does not exist'})")
    return path


def require_folder(path, what: str, needed: tuple[str, ...], any_of: tuple[str, ...] = ()) -> str:
    """Return ``path`` if it is a folder holding every file in ``needed`` and at least one of ``any_of``."""
    if not path or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what}: a model folder path is required, got {path!r}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: model folder {path!r} not found; expected a folder holding {', '.join(needed + any_of[:1])}")
    missing = [name for name in needed if not os.path.isfile(os.path.join(path, name))]
    if any_of and not any(os.path.isfile(os.path.join(path, name)) for name in any_of):
        missing.append(" or ".join(any_of))
    if missing:
        raise FileNotFoundError(f"{what}: folder {path!r} lacks {', '.join(missing)} (searched {path!r}; found {sorted(os.listdir(path))})")
    return path


def model_folder_of(path: str) -> str:
    """A file chosen from a models list that is the weights file of a transformers folder -> that folder.

    ComfyUI lists files, not folders: a user who copied a Hugging Face model folder picks its
    ``model.safetensors``; the folder is the file's parent when a ``config.json`` sits beside it.
    """
    if os.path.isfile(path) and os.path.isfile(os.path.join(os.path.dirname(path), "config.json")):
        return os.path.dirname(path)
    return path


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch checkpoint read with ``weights_only=True`` (no code runs).

    A checkpoint that wraps its tensors as ``{"state_dict": {...}}`` is unwrapped.
    """
    if not path.endswith(STATE_DICT_SUFFIXES):
        raise ValueError(f"weights file must end with one of {STATE_DICT_SUFFIXES}, got {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(check_safetensors(path, "weights file"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (code objects in the pickle, or no torch file: refuse)
        # torch's own text suggests weights_only=False, the unsafe fix: say what to do instead
        raise ValueError(f"could not read {os.path.basename(path)!r} as plain tensors (it holds more than tensors, "
                         f"or is not a torch file); only .safetensors weights are accepted from workflows: "
                         f"{CONVERT_HINT}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path!r} does not hold a flat dict of tensors (a state dict)")
    return state
