"""Reward backends behind one interface (base.Reward) and their registry (advantages live in training/advantages.py).

Importing this package is cheap: open_clip, transformers and rapidocr load only when a backend needs them.
"""

from .base import Reward
from .combination import WeightedSum
from .ranking import Ranking, rank
from .registry import available_backends, backend_options, load_reward, register_backend
from .runtime import clear_model_cache

__all__ = [
    "Reward", "WeightedSum", "Ranking", "rank",
    "available_backends", "backend_options", "load_reward", "register_backend", "clear_model_cache",
]
