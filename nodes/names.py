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

DISPLAY_NAMES = {
    REFLECTIVE_SAMPLER: "SRRL Reflective Sampler",
    RENOISE_GUIDE: "SRRL Re-noise Guide",
    REWARD_MODEL_LOADER: "SRRL Reward Model Loader",
    REWARD_SCORER: "SRRL Reward Scorer",
    LORA_TRAINER: "SRRL LoRA Trainer",
}

# Model folder the reward loader registers with the host (models/srrl_rewards).
REWARDS_FOLDER = "srrl_rewards"
