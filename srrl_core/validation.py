"""Argument checks that fail early with a message naming the argument and its valid range."""

from __future__ import annotations

import math

import torch


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` and the range [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer{_range(low, high)}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be{_range(low, high)}, got {value}")
    return value


def check_float(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """Return ``value`` as a finite float inside [low, high], or raise ValueError naming ``name``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number{_range(low, high)}, got {value!r}") from None
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be a finite number{_range(low, high)}, got {value}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values; every element must be finite")
    return tensor


def check_sigmas(name: str, sigmas: torch.Tensor) -> torch.Tensor:
    """A denoising schedule: 1-D, at least two entries, finite, non-negative, strictly decreasing."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"{name} must be a 1-D schedule with at least 2 noise levels (steps >= 1), got shape {tuple(sigmas.shape)}")
    check_finite(name, sigmas)
    if (sigmas < 0).any() or not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"{name} must be non-negative and strictly decreasing, got {sigmas.tolist()}")
    return sigmas


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""
