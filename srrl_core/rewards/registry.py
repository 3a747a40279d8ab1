"""Backends by name: ``load_reward(backend, **options) -> Reward``, for the loader node and training configs.

Options are the keyword arguments of the backend's loader (listed by ``backend_options``). The
``weighted_sum`` backend builds its terms recursively from
``terms=[{"backend": ..., "weight": ..., **options}, ...]``, so a whole combined reward fits in a JSON config.
"""

from __future__ import annotations

import inspect
from typing import Callable

from .base import Reward

_BACKENDS: dict[str, Callable[..., Reward]] = {}


def register_backend(name: str, factory: Callable[..., Reward]) -> None:
    """Make ``factory(**options) -> Reward`` available as ``load_reward(name, **options)``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"backend name must be an identifier such as 'clip_hf', got {name!r}")
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def backend_options(backend: str) -> list[str]:
    """Names of the options ``backend`` accepts."""
    return [p for p in inspect.signature(_factory(backend)).parameters if p != "self"]


def _factory(backend: str) -> Callable[..., Reward]:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {available_backends()}, got {backend!r}")
    return _BACKENDS[backend]


def load_reward(backend: str, **options) -> Reward:
    """Build the reward ``backend`` with ``options`` (models are loaded now, once, and cached)."""
    factory = _factory(backend)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"backend {backend!r} does not take option(s) {unknown}; it accepts {backend_options(backend)}")
    missing = [name for name, p in accepted.items() if p.default is p.empty and name not in options
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise ValueError(f"backend {backend!r} needs option(s) {missing}")
    return factory(**options)


def _weighted_sum(terms: list[dict]) -> Reward:
    from .combination import WeightedSum

    if not isinstance(terms, list) or not terms:
        raise ValueError("terms must be a non-empty list of {'backend': ..., 'weight': ..., **options} dicts")
    built = []
    for i, term in enumerate(terms):
        if not isinstance(term, dict) or "backend" not in term:
            raise ValueError(f"terms[{i}] must be a dict with a 'backend' key, got {term!r}")
        options = {k: v for k, v in term.items() if k not in ("backend", "weight")}
        built.append((load_reward(term["backend"], **options), term.get("weight", 1.0)))
    return WeightedSum(built)


def _register_builtins() -> None:
    # Imports stay inside the factories' modules' functions: heavy libraries load only when a backend is built.
    from .aesthetic import load_aesthetic
    from .clip_score import load_clip_hf, load_clip_openclip
    from .hpsv2 import load_hpsv2
    from .imagereward import load_imagereward
    from .ocr import OCRTextReward
    from .pickscore import load_pickscore
    from .verifiers import BrightnessBand, ColourPresence, HorizonLevel, ObjectCount, Symmetry
    from .vlm_judge import VLMJudge

    for name, factory in {
        "clip_openclip": load_clip_openclip, "clip_hf": load_clip_hf, "pickscore": load_pickscore,
        "aesthetic": load_aesthetic, "hpsv2": load_hpsv2, "imagereward": load_imagereward,
        "ocr": OCRTextReward, "vlm_judge": VLMJudge,
        "colour_presence": ColourPresence, "brightness_band": BrightnessBand, "horizon_level": HorizonLevel,
        "object_count": ObjectCount, "symmetry": Symmetry, "weighted_sum": _weighted_sum,
    }.items():
        register_backend(name, factory)


_register_builtins()
