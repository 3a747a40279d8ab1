"""Device and dtype choice, and the process-wide cache of loaded reward models.

Reward models are loaded once per ``(kind, path, device, dtype, extra)`` key and reused by every
Reward built with the same key, so a node graph or a training loop that asks for the same model
again pays nothing. Defaults: CUDA when available, else CPU; fp16 on CUDA, fp32 on CPU (CPU kernels
for half precision are slow and some are missing).
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Hashable

import torch

from ..validation import check_choice

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

_cache: dict[tuple, object] = {}
_lock = threading.Lock()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> 'cuda' when available, else 'cpu'; anything else must be a valid torch device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {str(device)!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' (or None) -> fp16 on CUDA, fp32 elsewhere; else one of 'fp32', 'fp16', 'bf16' (or a torch dtype)."""
    if isinstance(dtype, torch.dtype):
        check_choice("dtype", dtype, set(DTYPES.values()))
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[check_choice("dtype", dtype, set(DTYPES) | {"auto"})]


def cached_model(kind: str, path: str, device: torch.device, dtype: torch.dtype, build: Callable[[], object],
                 extra: Hashable = ()) -> object:
    """Return the model for this key, building it with ``build()`` the first time.

    ``path`` is made absolute so two spellings of one file share an entry. Building happens under the lock:
    two threads asking for the same new model load it once.
    """
    key = (kind, os.path.abspath(path), str(device), dtype, extra)
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def clear_model_cache() -> None:
    """Forget every cached reward model (frees its memory once no Reward refers to it)."""
    with _lock:
        _cache.clear()
