"""SRRL Reward Model Loader: choose a reward backend and its files from the host's model folders -> REWARD.

Weights live in ``models/srrl_rewards`` (registered with the host by ``register_model_folders``) or, for CLIP
image towers, ``models/clip_vision``. A Hugging Face model folder copied there is chosen through its
``model.safetensors``. Everything else (loading, caching, validation) is srrl_core's ``load_reward``.
"""

from __future__ import annotations

import json
import os

from srrl_core.rewards import available_backends, backend_options, load_reward
from srrl_core.rewards.files import check_safetensors, refuse_pickle
from srrl_core.rewards.registry import check_option_depth, map_file_options
from srrl_core.safe_paths import UnsafePath, resolve_in_folders
from srrl_core.validation import check_float

from . import names

NONE = "none"
# Files the reward folder lists: weights, plus .json (open_clip configs) and .txt (BERT vocab) for aux files.
EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json", ".txt"}
SEARCH_FOLDERS = (names.REWARDS_FOLDER, "clip_vision")
MODEL_BACKENDS = {"clip_openclip", "clip_hf", "pickscore", "aesthetic", "hpsv2", "imagereward"}


def register_model_folders() -> None:
    """Make ``models/srrl_rewards`` a host model folder (works with the 2024 and current folder_paths APIs)."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, names.REWARDS_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(names.REWARDS_FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[names.REWARDS_FOLDER] = ([path], set(EXTENSIONS))
    elif path not in entry[0]:  # defined first by the user's extra_model_paths.yaml: add the default folder too
        folder_paths.add_model_folder_path(names.REWARDS_FOLDER, path)


def _file_choices() -> list[str]:
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


def _full_path(name: str, label: str, kind: str = "file") -> str | None:
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
    if not isinstance(value, str):
        raise UnsafePath(f"{label}: expected a file name in models/{names.REWARDS_FOLDER} or models/clip_vision, "
                         f"got {type(value).__name__}")
    return _full_path(value, label, kind)


def parse_options(text: str) -> dict:
    """The options box as a JSON object, its nesting bounded (a 5000-deep list must not exhaust the stack)."""
    try:
        extra = json.loads(text or "{}")
    except RecursionError:
        raise ValueError("options nests too deep to read; a reward config needs a few levels") from None
    except ValueError as error:
        raise ValueError(f"options must be a JSON object such as {{\"count\": 2}}: {error}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"options must be a JSON object such as {{\"count\": 2}}, got {type(extra).__name__}")
    check_option_depth(extra, "options")
    return extra


def _options(backend, weights, aux, architecture, endpoint, vlm_model, api_key_env, rule, on_failure, fallback,
             device, dtype) -> dict:
    """The node's widgets as options of ``backend`` (see docs/rewards.md for the table)."""
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
    if backend == "vlm_judge":
        return {"endpoint": endpoint, "model": vlm_model, "api_key_env": api_key_env.strip() or None,
                "rule": rule, "fallback": fallback if on_failure == "use fallback score" else None}
    return {}


class RewardModelLoader:
    DESCRIPTION = ("Loads a reward that judges images against prompts: CLIP score, PickScore, HPSv2, ImageReward, "
                   "LAION aesthetics, OCR of quoted text, a VLM judge over an OpenAI-compatible API, or pixel verifiers. "
                   "Models load once and are cached.")
    CATEGORY = names.CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (names.REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("The reward, for the SRRL Reward Scorer, Reflective Sampler or LoRA Trainer.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = _file_choices()
        return {"required": {
            "backend": (available_backends(), {"default": "clip_openclip", "tooltip":
                "clip_openclip / hpsv2: open_clip checkpoint. clip_hf / pickscore: a transformers CLIP folder. "
                "aesthetic: CLIP ViT-L/14 + head. imagereward: ImageReward.pt + BERT vocab. ocr: text in quotes. "
                "vlm_judge: a chat API. colour_presence, brightness_band, horizon_level, object_count, symmetry: "
                "pixel verifiers (parameters in options). weighted_sum: terms in options."}),
            "weights": (files, {"tooltip":
                "Main weights, from models/srrl_rewards or models/clip_vision: the open_clip checkpoint "
                "(clip_openclip, hpsv2), model.safetensors inside a transformers folder (clip_hf, pickscore), the CLIP "
                "ViT-L/14 (aesthetic), ImageReward.pt (imagereward). 'none' for the other backends."}),
            "aux_file": (files, {"tooltip":
                "Second file, by backend: the head .safetensors (aesthetic), vocab.txt of bert-base-uncased "
                "(imagereward), any file in the tokenizer folder when it is not the model folder (clip_hf, pickscore), "
                "an open_clip model config .json for custom architectures (clip_openclip, hpsv2). Else 'none'."}),
            "clip_architecture": ("STRING", {"default": "ViT-H-14", "tooltip":
                "open_clip architecture of the checkpoint (ViT-H-14 for SRRL's CLIP reward and HPSv2; "
                "ViT-L-14-quickgelu for OpenAI ViT-L/14 weights under the aesthetic head)."}),
            "vlm_endpoint": ("STRING", {"default": "http://127.0.0.1:8000/v1", "tooltip":
                "vlm_judge: base URL of an OpenAI-compatible API (…/v1) or its full /chat/completions URL."}),
            "vlm_model": ("STRING", {"default": "", "tooltip": "vlm_judge: the model name the endpoint serves."}),
            "api_key_env": ("STRING", {"default": "", "tooltip":
                "vlm_judge: NAME of the environment variable that holds the API key (e.g. OPENAI_API_KEY), never the "
                "key itself. Empty: no key."}),
            "rule": ("STRING", {"default": "", "multiline": True, "tooltip":
                "vlm_judge: a rule the image must obey; asks 'Does this image obey: {rule}? Answer Yes or No.' "
                "Empty: asks whether the image shows the prompt."}),
            "on_failure": (["raise", "use fallback score"], {"default": "raise", "tooltip":
                "vlm_judge: when the endpoint fails or answers nonsense, stop with an error, or log a warning and "
                "use fallback_score."}),
            "fallback_score": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                "vlm_judge: the score used for an image that could not be judged (with on_failure = use fallback score)."}),
            "device": (["auto", "cpu", "cuda"], {"default": "auto", "tooltip":
                "Where model backends run; auto = CUDA when available."}),
            "dtype": (["auto", "fp32", "fp16", "bf16"], {"default": "auto", "tooltip":
                "Precision of model backends; auto = fp16 on CUDA, fp32 on CPU."}),
            "options": ("STRING", {"default": "{}", "multiline": True, "tooltip":
                "Extra backend options as a JSON object, overriding the widgets: verifier parameters "
                "(e.g. {\"colour\": \"255,0,0\", \"count\": 2}), {\"scale\": 100} for clip, {\"timeout\": 30, "
                "\"concurrency\": 4, \"question\": \"...{prompt}...\"} for vlm_judge, {\"terms\": [...]} for weighted_sum."}),
        }}

    def load(self, backend, weights, aux_file, clip_architecture, vlm_endpoint, vlm_model, api_key_env, rule,
             on_failure, fallback_score, device, dtype, options):
        check_float("fallback_score", fallback_score, 0.0, 1.0)
        extra = parse_options(options)
        # File names inside options (also in weighted_sum terms) obey the same folder rule as the widgets.
        extra = map_file_options(extra, _resolve_option)
        weights_path = _full_path(weights, "weights")
        if backend in MODEL_BACKENDS and weights_path is None:
            raise ValueError(f"weights: choose the {backend} weights file (put it in models/{names.REWARDS_FOLDER} "
                             "or models/clip_vision and refresh the page)")
        chosen = _options(backend, weights_path, _full_path(aux_file, "aux_file"), clip_architecture, vlm_endpoint,
                          vlm_model, api_key_env, rule, on_failure, fallback_score, device, dtype)
        accepted = set(backend_options(backend))
        chosen = {k: v for k, v in chosen.items() if k in accepted}
        reward = load_reward(backend, **{**chosen, **extra})
        return (reward.set_interrupt_check(_host_interrupt_check()),)


def _host_interrupt_check():
    """The host's Cancel check (raises its InterruptProcessingException); None outside a host."""
    try:
        import comfy.model_management
    except ImportError:
        return None
    return comfy.model_management.throw_exception_if_processing_interrupted


NODE_CLASS_MAPPINGS = {names.REWARD_MODEL_LOADER: RewardModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {names.REWARD_MODEL_LOADER: names.DISPLAY_NAMES[names.REWARD_MODEL_LOADER]}
