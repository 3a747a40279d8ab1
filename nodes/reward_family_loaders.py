"""SRRL reward loaders, one node per reward family, each showing only the widgets that apply -> REWARD.

CLIP-family scores (CLIP, PickScore, HPSv2, LAION aesthetics), ImageReward, OCR, a VLM judge, pixel verifiers and a
weighted mix of other rewards. The nodes only declare widgets; folders, file checks, the options box and building
the reward are shared in reward_loading.py (with the deprecated all-in-one SRRL Reward Model Loader).
"""

from __future__ import annotations

from srrl_core.rewards.combination import WeightedSum
from srrl_core.validation import check_float

from . import names
from .reward_loading import (
    CLIP_FAMILY,
    DEVICE_INPUT,
    DTYPE_INPUT,
    FAILURE_CHOICES,
    VERIFIERS,
    build_reward,
    file_choices,
    full_path,
    host_interrupt_check,
    model_options,
    options_input,
    read_options,
    vlm_options,
    weights_path,
)

_OUTPUT_TOOLTIPS = ("The reward, for the SRRL Reward Scorer, Reflective Sampler or LoRA Trainer.",)


class _RewardLoader:
    CATEGORY = names.CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (names.REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = _OUTPUT_TOOLTIPS


class CLIPScoreLoader(_RewardLoader):
    DESCRIPTION = ("Prompt-image agreement or beauty from a CLIP-family model: CLIP score (open_clip or transformers "
                   "weights), PickScore, HPSv2 or the LAION aesthetic head. Weights come from models/srrl_rewards or "
                   "models/clip_vision, as .safetensors; the model loads once and is cached.")

    @classmethod
    def INPUT_TYPES(cls):
        files = file_choices()
        return {"required": {
            "model_kind": (list(CLIP_FAMILY), {"default": "pickscore", "tooltip":
                "clip_openclip / hpsv2: an open_clip checkpoint file. clip_hf / pickscore: model.safetensors inside a "
                "transformers CLIP folder. aesthetic: a CLIP ViT-L/14 plus the aesthetic head."}),
            "weights": (files, {"tooltip":
                "The open_clip checkpoint (clip_openclip, hpsv2), model.safetensors inside a transformers folder "
                "(clip_hf, pickscore) or the CLIP ViT-L/14 (aesthetic)."}),
            "aux_file": (files, {"tooltip":
                "aesthetic: the head .safetensors. clip_hf / pickscore: any file of the tokenizer folder when it is "
                "not the model folder. clip_openclip / hpsv2: an open_clip model config .json for custom "
                "architectures. Else 'none'."}),
            "clip_architecture": ("STRING", {"default": "ViT-H-14", "tooltip":
                "open_clip architecture of the checkpoint (ViT-H-14 for SRRL's CLIP reward and HPSv2; "
                "ViT-L-14-quickgelu for OpenAI ViT-L/14 weights under the aesthetic head). Unused by clip_hf and "
                "pickscore."}),
            "device": DEVICE_INPUT,
            "dtype": DTYPE_INPUT,
            "options": options_input("Extra options as a JSON object, overriding the widgets, e.g. {\"scale\": 100} "
                                     "for clip_openclip / clip_hf, {\"max_batch\": 8}."),
        }}

    def load(self, model_kind, weights, aux_file, clip_architecture, device, dtype, options):
        extra = read_options(options)
        chosen = model_options(model_kind, weights_path(model_kind, weights), full_path(aux_file, "aux_file"),
                               clip_architecture, device, dtype)
        return (build_reward(model_kind, chosen, extra),)


class ImageRewardLoader(_RewardLoader):
    DESCRIPTION = ("ImageReward (human preference for prompt-image pairs): its checkpoint and the bert-base-uncased "
                   "vocabulary from models/srrl_rewards. The model loads once and is cached.")

    @classmethod
    def INPUT_TYPES(cls):
        files = file_choices()
        return {"required": {
            "weights": (files, {"tooltip": "The ImageReward checkpoint (converted to .safetensors)."}),
            "bert_vocab": (files, {"tooltip": "vocab.txt of bert-base-uncased (its folder holds the tokenizer)."}),
            "device": DEVICE_INPUT,
            "dtype": DTYPE_INPUT,
            "options": options_input("Extra options as a JSON object, e.g. {\"max_batch\": 8}."),
        }}

    def load(self, weights, bert_vocab, device, dtype, options):
        extra = read_options(options)
        chosen = model_options("imagereward", weights_path("imagereward", weights), full_path(bert_vocab, "bert_vocab"),
                               "", device, dtype)
        return (build_reward("imagereward", chosen, extra),)


class OCRLoader(_RewardLoader):
    DESCRIPTION = ("Rendered text: reads the image with RapidOCR (models ship with the package, CPU) and scores how "
                   "closely it matches the text the prompt puts in quotes, from 0 to 1.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "min_confidence": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                "Ignore recognised text below this OCR confidence."}),
        }}

    def load(self, min_confidence):
        check_float("min_confidence", min_confidence, 0.0, 1.0)
        return (build_reward("ocr", {"min_confidence": min_confidence}, {}),)


class VLMJudgeLoader(_RewardLoader):
    DESCRIPTION = ("A vision-language model judges each image over an OpenAI-compatible chat API: the probability of "
                   "'Yes' to a question about the prompt or a rule. Endpoints and API-key variables must be allowed "
                   "by the operator (loopback only by default; see docs/security.md).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "endpoint": ("STRING", {"default": "http://127.0.0.1:8000/v1", "tooltip":
                "Base URL of an OpenAI-compatible API (…/v1) or its full /chat/completions URL."}),
            "model": ("STRING", {"default": "", "tooltip": "The model name the endpoint serves."}),
            "api_key_env": ("STRING", {"default": "", "tooltip":
                "NAME of the environment variable that holds the API key (e.g. OPENAI_API_KEY), never the key "
                "itself. Empty: no key."}),
            "rule": ("STRING", {"default": "", "multiline": True, "tooltip":
                "A rule the image must obey; asks 'Does this image obey: {rule}? Answer Yes or No.' Empty: asks "
                "whether the image shows the prompt."}),
            "on_failure": (FAILURE_CHOICES, {"default": "raise", "tooltip":
                "When the endpoint fails or answers nonsense: stop with an error, or log a warning and use "
                "fallback_score."}),
            "fallback_score": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                "The score of an image that could not be judged (with on_failure = use fallback score)."}),
            "options": options_input("Extra options as a JSON object, e.g. {\"timeout\": 30, \"concurrency\": 4, "
                                     "\"retries\": 2, \"question\": \"...{prompt}...\"}."),
        }}

    def load(self, endpoint, model, api_key_env, rule, on_failure, fallback_score, options):
        check_float("fallback_score", fallback_score, 0.0, 1.0)
        extra = read_options(options)
        chosen = vlm_options(endpoint, model, api_key_env, rule, on_failure, fallback_score)
        return (build_reward("vlm_judge", chosen, extra),)


class VerifierLoader(_RewardLoader):
    DESCRIPTION = ("A model-free pixel check with a score in [0, 1]: a colour is present, brightness in a band, a "
                   "level horizon, a number of coloured objects, mirror symmetry. No download, no GPU.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "verifier": (list(VERIFIERS), {"default": "colour_presence", "tooltip":
                "colour_presence: {\"colour\": \"255,0,0\", \"tolerance\": 0.25, \"min_fraction\": 0.05}. "
                "brightness_band: {\"low\": 0.3, \"high\": 0.7, \"softness\": 0.1}. horizon_level: "
                "{\"max_tilt_degrees\": 10}. object_count: {\"colour\": \"255,0,0\", \"count\": 2}. "
                "symmetry: {\"axis\": \"vertical\"}."}),
            "parameters": options_input("The verifier's parameters as a JSON object (see the verifier's tooltip); "
                                        "colour_presence and object_count need a colour."),
        }}

    def load(self, verifier, parameters):
        return (build_reward(verifier, {}, read_options(parameters)),)


class WeightedMixLoader(_RewardLoader):
    DESCRIPTION = ("Combines rewards into one: score = sum of weight x reward. Rewards live on different scales "
                   "(CLIP ~0.3, PickScore ~20, verifiers 0..1): choose the weights with that in mind; a negative "
                   "weight makes a penalty. Chain mixes for more terms.")

    @classmethod
    def INPUT_TYPES(cls):
        def weight(default):
            return ("FLOAT", {"default": default, "min": -1000.0, "max": 1000.0, "step": 0.01, "tooltip":
                              "The weight of the reward above it."})

        return {
            "required": {
                "reward_1": (names.REWARD, {"tooltip": "A reward from another SRRL Reward loader."}),
                "weight_1": weight(1.0),
                "reward_2": (names.REWARD, {"tooltip": "A second reward."}),
                "weight_2": weight(1.0),
            },
            "optional": {
                "reward_3": (names.REWARD, {"tooltip": "Optional third reward."}),
                "weight_3": weight(1.0),
                "reward_4": (names.REWARD, {"tooltip": "Optional fourth reward."}),
                "weight_4": weight(1.0),
            },
        }

    def load(self, reward_1, weight_1, reward_2, weight_2, reward_3=None, weight_3=1.0, reward_4=None, weight_4=1.0):
        pairs = [(reward_1, weight_1, 1), (reward_2, weight_2, 2), (reward_3, weight_3, 3), (reward_4, weight_4, 4)]
        terms = [(reward, check_float(f"weight_{i}", w, -1000.0, 1000.0)) for reward, w, i in pairs if reward is not None]
        return (WeightedSum(terms).set_interrupt_check(host_interrupt_check()),)


_NODES = {
    names.REWARD_CLIP_SCORE: CLIPScoreLoader,
    names.REWARD_IMAGEREWARD: ImageRewardLoader,
    names.REWARD_OCR: OCRLoader,
    names.REWARD_VLM_JUDGE: VLMJudgeLoader,
    names.REWARD_VERIFIER: VerifierLoader,
    names.REWARD_WEIGHTED_MIX: WeightedMixLoader,
}
NODE_CLASS_MAPPINGS = dict(_NODES)
NODE_DISPLAY_NAME_MAPPINGS = {key: names.DISPLAY_NAMES[key] for key in _NODES}
