"""What every reward loader node shares: the model folders, file choices checked against them, the options box, and
building the REWARD. The nodes (reward_loader.py, reward_family_loaders.py) only declare widgets and map them here.

Weights live in ``models/srrl_rewards`` (registered with the host by ``register_model_folders``) or, for CLIP
image towers, ``models/clip_vision``. A Hugging Face model folder copied there is chosen through its
``model.safetensors``. Everything else (loading, caching, validation) is srrl_core's ``load_reward``.
"""

from __future__ import annotations

import json
import os

from srrl_core.rewards import backend_options, load_reward
from srrl_core.rewards.files import check_safetensors, refuse_pickle
from srrl_core.rewards.registry import check_option_depth, map_file_options
from srrl_core.safe_paths import UnsafePath, resolve_in_folders

from . import names

NONE = "none"
# Files the reward folder lists: weights, plus .json (open_clip configs) and .txt (BERT vocab) for aux files.
EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json", ".txt"}
SEARCH_FOLDERS = (names.REWARDS_FOLDER, "clip_vision")
MODEL_BACKENDS = {"clip_openclip", "clip_hf", "pickscore", "aesthetic", "hpsv2", "imagereward"}
# The reward families, one loader node each (pixel verifiers need no model and no network).
CLIP_FAMILY = ("clip_openclip", "clip_hf", "pickscore", "hpsv2", "aesthetic")
VERIFIERS = ("colour_presence", "brightness_band", "horizon_level", "object_count", "symmetry")
FAILURE_CHOICES = ["raise", "use fallback score"]

DEVICE_INPUT = (["auto", "cpu", "cuda"], {"default": "auto", "tooltip":
    "Where the model runs; auto = CUDA when available."})
DTYPE_INPUT = (["auto", "fp32", "fp16", "bf16"], {"default": "auto", "tooltip":
    "Precision of the model; auto = fp16 on CUDA, fp32 on CPU."})


def options_input(tooltip: str) -> tuple:
    return ("STRING", {"default": "{}", "multiline": True, "tooltip": tooltip})


def register_model_folders() -> None:
    """Make ``models/srrl_rewards`` a host model folder (works with the 2024 and current folder_paths APIs)."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, names.REWARDS_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(names.REWARDS_FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[names.REWARDS_FOLDER] = ([path], set(EXTENSIONS))
    elif path not in entry[0]:  # defined first by the user's extra_model_paths.yaml: add the default folder too
        folder_paths.add_model_folder_path(names.REWARDS_FOLDER, path)


def file_choices() -> list[str]:
    """'none' and every file of the reward folders, as the file widgets list them."""
    try:
        import folder_paths
    except ImportError:  # outside a host (tests, scripts): nothing to list
        return [NONE]
    files = set()
    for folder in SEARCH_FOLDERS:
        if folder in folder_paths.folder_names_and_paths:
            files.update(folder_paths.get_filename_list(folder))
    return [NONE] + sorted(files)


def _search_paths() -> list[str]:
    import folder_paths

    return [p for f in SEARCH_FOLDERS for p in folder_paths.folder_names_and_paths.get(f, ([], None))[0]]


def full_path(name: str, label: str, kind: str = "file") -> str | None:
    """The file (or folder) ``name`` inside the reward model folders, checked here rather than trusting the host's
    validation (which skips optional and nested values): no absolute paths, no '..', no link out of a folder."""
    if not name or name == NONE:
        return None
    searched = _search_paths()
    if kind == "any":
        try:
            return resolve_in_folders(name, searched, label, "file")
        except FileNotFoundError:
            kind = "folder"
    try:
        path = resolve_in_folders(name, searched, label, kind)
    except FileNotFoundError:
        raise FileNotFoundError(f"{label}: {name!r} not found; searched {searched}") from None
    return _check_weights(path, label)


def _check_weights(path: str, label: str) -> str:
    """Workflows are untrusted: never unpickle a file they name, and say which file is broken before loading."""
    if os.path.isdir(path):
        # a transformers model folder whose weights exist only as a pickle (tokenizer folders hold no weights)
        pickled = os.path.join(path, "pytorch_model.bin")
        if os.path.isfile(pickled) and not os.path.isfile(os.path.join(path, "model.safetensors")):
            refuse_pickle(pickled, label)
        return path
    refuse_pickle(path, label)
    if path.endswith(".safetensors"):
        check_safetensors(path, label)
    return path


def _resolve_option(value, label: str, kind: str) -> str:
    if not isinstance(value, str):  # UnsafePath (a ValueError) like every other refused path
        raise UnsafePath(f"{label}: expected a file name in models/{names.REWARDS_FOLDER} or models/clip_vision, "
                         f"got {type(value).__name__}")
    return full_path(value, label, kind)


def parse_options(text: str) -> dict:
    """The options box as a JSON object, its nesting bounded (a 5000-deep list must not exhaust the stack)."""
    try:
        extra = json.loads(text or "{}")
    except RecursionError:
        raise ValueError("options nests too deep to read; a reward config needs a few levels") from None
    except ValueError as error:
        raise ValueError(f"options must be a JSON object such as {{\"count\": 2}}: {error}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"options must be a JSON object such as {{\"count\": 2}}, got {type(extra).__name__}")  # noqa: TRY004
    check_option_depth(extra, "options")
    return extra


def model_options(backend: str, weights: str | None, aux: str | None, architecture: str, device: str,
                  dtype: str) -> dict:
    """The file widgets (already resolved) of a model backend as its options (see docs/rewards.md for the table)."""
    model = {"device": device, "dtype": dtype}
    aux_folder = os.path.dirname(aux) if aux else None
    if backend in ("clip_openclip", "hpsv2"):
        return {"checkpoint": weights, "model_name": architecture, "config_file": aux, **model}
    if backend in ("clip_hf", "pickscore"):
        return {"folder": os.path.dirname(weights) if weights else weights, "tokenizer_folder": aux_folder, **model}
    if backend == "aesthetic":
        return {"clip": weights, "head": aux, "clip_model_name": architecture, **model}
    if backend == "imagereward":
        return {"checkpoint": weights, "tokenizer": aux_folder, **model}
    return {}


def vlm_options(endpoint: str, model: str, api_key_env: str, rule: str, on_failure: str, fallback: float) -> dict:
    return {"endpoint": endpoint, "model": model, "api_key_env": api_key_env.strip() or None, "rule": rule,
            "fallback": fallback if on_failure == "use fallback score" else None}


def weights_path(backend: str, weights: str, label: str = "weights") -> str | None:
    """The main weights file of ``backend``, required for model backends."""
    path = full_path(weights, label)
    if backend in MODEL_BACKENDS and path is None:
        raise ValueError(f"{label}: choose the {backend} weights file (put it in models/{names.REWARDS_FOLDER} "
                         "or models/clip_vision and refresh the page)")
    return path


def read_options(text: str) -> dict:
    """The options box, its file names (also inside weighted_sum terms) resolved by the same folder rule as the
    file widgets."""
    return map_file_options(parse_options(text), _resolve_option)


def build_reward(backend: str, chosen: dict, extra: dict):
    """``load_reward(backend)`` from the widgets' options (those the backend takes) and ``extra`` (the options box,
    from ``read_options``), which overrides them; with the host's Cancel check."""
    accepted = set(backend_options(backend))
    chosen = {k: v for k, v in chosen.items() if k in accepted}
    reward = load_reward(backend, **{**chosen, **extra})
    return reward.set_interrupt_check(host_interrupt_check())


def host_interrupt_check():
    """The host's Cancel check (raises its InterruptProcessingException); None outside a host."""
    try:
        import comfy.model_management
    except ImportError:
        return None
    return comfy.model_management.throw_exception_if_processing_interrupted
