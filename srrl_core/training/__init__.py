"""SRRL training: reflective rollouts with branching, sibling selection, PPO-clipped LoRA updates, checkpoints
and kohya-style LoRA export (see docs/training.md)."""

from .checkpoint import latest_checkpoint, load_checkpoint, model_fingerprint
from .config import TrainConfig
from .distributed import AccelerateProcesses, SingleProcess
from .evaluation import sample_rewards
from .export import check_lora_name, diffusers_to_ldm, export_lora, kohya_state_dict
from .lora import LoraEMA, adapters_disabled, add_lora, lora_parameters, lora_state_dict, remove_lora
from .models import available_models, build_policy, register_model
from .policy import PolicyModel, take_rows
from .ppo import (
    PPOUpdate, TrainingDiverged, Transitions, clip_advantages, kept_transitions, ppo_clip_loss, transition_kl,
    transition_losses,
)  # fmt: skip
from .rollout import Rollout, collect_rollout
from .selection import select_siblings
from .trainer import SRRLTrainer

__all__ = [
    "AccelerateProcesses", "LoraEMA", "PPOUpdate", "PolicyModel", "Rollout", "SRRLTrainer", "SingleProcess",
    "TrainConfig", "TrainingDiverged", "Transitions", "adapters_disabled", "add_lora", "available_models",
    "build_policy", "check_lora_name", "clip_advantages", "collect_rollout", "diffusers_to_ldm", "export_lora",
    "kept_transitions", "kohya_state_dict", "latest_checkpoint", "load_checkpoint", "lora_parameters",
    "lora_state_dict", "model_fingerprint", "ppo_clip_loss", "register_model", "remove_lora", "sample_rewards",
    "select_siblings", "take_rows", "transition_kl", "transition_losses",
]
