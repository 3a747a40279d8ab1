"""SRRL Reward Model Loader (deprecated): every reward backend behind one node with all their widgets -> REWARD.

Kept registered so that saved workflows using ``SRRLRewardModelLoader`` keep loading and running; new graphs use
the per-family loaders of reward_family_loaders.py, which show only the widgets that apply. The logic (folders,
file checks, options) is shared in reward_loading.py.
"""

from __future__ import annotations

from srrl_core.rewards import available_backends
from srrl_core.validation import check_float

from . import names
from .reward_loading import (  # noqa: F401  (register_model_folders, parse_options: imported from here by older code)
    DEVICE_INPUT,
    DTYPE_INPUT,
    FAILURE_CHOICES,
    NONE,
    build_reward,
    file_choices,
    full_path,
    model_options,
    parse_options,
    read_options,
    register_model_folders,
    vlm_options,
    weights_path,
)


class RewardModelLoader:
    DESCRIPTION = ("Deprecated: use the SRRL Reward loaders of each family (CLIP-family score, ImageReward, OCR, VLM "
                   "judge, pixel verifier, weighted mix), which show only the widgets that apply. Still loads every "
                   "backend (CLIP score, PickScore, HPSv2, ImageReward, LAION aesthetics, OCR, VLM judge, verifiers) "
                   "so that saved workflows keep working.")
    DEPRECATED = True  # current ComfyUI hides it from the node search and marks it; saved workflows still load it
    CATEGORY = names.CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (names.REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("The reward, for the SRRL Reward Scorer, Reflective Sampler or LoRA Trainer.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = file_choices()
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
            "on_failure": (FAILURE_CHOICES, {"default": "raise", "tooltip":
                "vlm_judge: when the endpoint fails or answers nonsense, stop with an error, or log a warning and "
                "use fallback_score."}),
            "fallback_score": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                "vlm_judge: the score used for an image that could not be judged (with on_failure = use fallback score)."}),
            "device": DEVICE_INPUT,
            "dtype": DTYPE_INPUT,
            "options": ("STRING", {"default": "{}", "multiline": True, "tooltip":
                "Extra backend options as a JSON object, overriding the widgets: verifier parameters "
                "(e.g. {\"colour\": \"255,0,0\", \"count\": 2}), {\"scale\": 100} for clip, {\"timeout\": 30, "
                "\"concurrency\": 4, \"question\": \"...{prompt}...\"} for vlm_judge, {\"terms\": [...]} for weighted_sum."}),
        }}

    def load(self, backend, weights, aux_file, clip_architecture, vlm_endpoint, vlm_model, api_key_env, rule,
             on_failure, fallback_score, device, dtype, options):
        check_float("fallback_score", fallback_score, 0.0, 1.0)
        extra = read_options(options)
        weights = weights_path(backend, weights)
        aux = full_path(aux_file, "aux_file")
        if backend == "vlm_judge":
            chosen = vlm_options(vlm_endpoint, vlm_model, api_key_env, rule, on_failure, fallback_score)
        else:
            chosen = model_options(backend, weights, aux, clip_architecture, device, dtype)
        return (build_reward(backend, chosen, extra),)


NODE_CLASS_MAPPINGS = {names.REWARD_MODEL_LOADER: RewardModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {names.REWARD_MODEL_LOADER: names.DISPLAY_NAMES[names.REWARD_MODEL_LOADER]}
