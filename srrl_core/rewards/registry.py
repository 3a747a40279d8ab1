"""Backends by name: ``load_reward(backend, **options) -> Reward``, for the loader node and training configs.

Options are the keyword arguments of the backend's loader (listed by ``backend_options``). The
``weighted_sum`` backend builds its terms recursively from
``terms=[{"backend": ..., "weight": ..., **options}, ...]``, so a whole combined reward fits in a JSON config.
"""

from __future__ import annotations

import inspect
from typing import Callable

from .base import Reward

# Options that name a file or folder, by the kind of path they need: callers that take options from an untrusted
# source (the loader node) resolve these through their own folder lists (see map_file_options).
FILE_OPTIONS = {"checkpoint": "file", "config_file": "file", "head": "file", "clip": "any",
                "clip_config_file": "file", "folder": "folder", "tokenizer_folder": "folder", "tokenizer": "folder"}
# Nesting of options (dicts and lists, weighted_sum terms included); a real config needs 4 or 5 levels.
MAX_OPTION_DEPTH = 16

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


def check_option_depth(options, label: str = "options", limit: int = MAX_OPTION_DEPTH) -> None:
    """ValueError naming ``label`` when dicts/lists nest deeper than ``limit`` (iterative: no RecursionError)."""
    stack = [(options, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                raise ValueError(f"{label} nests dicts/lists more than {limit} levels deep; a reward config needs a "
                                 "few levels (weighted_sum terms included)")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def map_file_options(options: dict, resolve: Callable[[object, str, str], str], label: str = "options") -> dict:
    """A copy of ``options`` with every file-naming option (FILE_OPTIONS, also inside weighted_sum ``terms``)
    replaced by ``resolve(value, label_of_the_option, kind)``; empty values stay as they are."""
    check_option_depth(options, label)
    out = {}
    for key, value in options.items():
        where = f"{label}.{key}"
        if key in FILE_OPTIONS and value not in (None, ""):
            value = resolve(value, where, FILE_OPTIONS[key])
        elif key == "terms" and isinstance(value, list):
            value = [map_file_options(term, resolve, f"{where}[{i}]") if isinstance(term, dict) else term
                     for i, term in enumerate(value)]
        out[key] = value
    return out


def _weighted_sum(terms: list[dict]) -> Reward:
    from .combination import WeightedSum

    check_option_depth(terms, "terms")
    if not isinstance(terms, list) or not terms:
        raise ValueError("terms must be a non-empty list of {'backend': ..., 'weight': ..., **options} dicts")
    built = []
    for i, term in enumerate(terms):
        if not isinstance(term, dict) or "backend" not in term:
            raise ValueError(f"terms[{i}] must be a dict with a 'backend' key, got {term!r}")
        options = {k: v for k, v in term.items() if k not in ("backend", "weight")}
        built.append((load_reward(term["backend"], **options), term.get("weight", 1.0)))
    return WeightedSum(built)


def _toy_physics() -> Reward:
    """The toy world's graded pixel verifier (presence x faithfulness x physical rule), for its recipes."""
    from ..toyworld.verifiers import ToyPhysicsReward

    return ToyPhysicsReward()


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
        "object_count": ObjectCount, "symmetry": Symmetry, "weighted_sum": _weighted_sum, "toy_physics": _toy_physics,
    }.items():
        register_backend(name, factory)


_register_builtins()
