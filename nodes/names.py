"""Every name the pack shows ComfyUI, in one place: node ids, display names, the category, custom types."""

CATEGORY = "SRRL"

# Custom socket types.
REWARD = "REWARD"

# Node ids (keys in NODE_CLASS_MAPPINGS; stable: saved workflows refer to them) and display names.
REFLECTIVE_SAMPLER = "SRRLReflectiveSampler"
RENOISE_GUIDE = "SRRLRenoiseGuide"
REWARD_MODEL_LOADER = "SRRLRewardModelLoader"
REWARD_SCORER = "SRRLRewardScorer"
LORA_TRAINER = "SRRLLoRATrainer"
# One reward loader per family, each with only its widgets (REWARD_MODEL_LOADER, all in one, is deprecated).
REWARD_CLIP_SCORE = "SRRLRewardCLIPScore"
REWARD_IMAGEREWARD = "SRRLRewardImageReward"
REWARD_OCR = "SRRLRewardOCR"
REWARD_VLM_JUDGE = "SRRLRewardVLMJudge"
REWARD_VERIFIER = "SRRLRewardVerifier"
REWARD_WEIGHTED_MIX = "SRRLRewardWeightedMix"

DISPLAY_NAMES = {
    REFLECTIVE_SAMPLER: "SRRL Reflective Sampler",
    RENOISE_GUIDE: "SRRL Re-noise Guide",
    REWARD_MODEL_LOADER: "SRRL Reward Model Loader (deprecated)",
    REWARD_SCORER: "SRRL Reward Scorer",
    LORA_TRAINER: "SRRL LoRA Trainer",
    REWARD_CLIP_SCORE: "SRRL Reward: CLIP / PickScore / HPSv2 / Aesthetic",
    REWARD_IMAGEREWARD: "SRRL Reward: ImageReward",
    REWARD_OCR: "SRRL Reward: OCR Text",
    REWARD_VLM_JUDGE: "SRRL Reward: VLM Judge",
    REWARD_VERIFIER: "SRRL Reward: Pixel Verifier",
    REWARD_WEIGHTED_MIX: "SRRL Reward: Weighted Mix",
}

# Model folder the reward loader registers with the host (models/srrl_rewards).
REWARDS_FOLDER = "srrl_rewards"
