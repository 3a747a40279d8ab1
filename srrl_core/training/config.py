r"""Every setting of an SRRL training run, with the reference code's defaults, and the curriculum.

The backward-progressive curriculum of B²-DiffuRL / SRRL over stages :math:`n = 0 \dots` ``stages - 1``:

.. math::
    \text{split\_step}(n) = s_0 + \Delta_s\,(n \bmod P),\qquad
    K(n) = \min\big(\lfloor n / R \rfloor,\ K_{max}\big)

with :math:`s_0 = 1,\ \Delta_s = 4,\ P = 5` (split steps 1, 5, 9, 13, 17) and :math:`R = 5` (K = 0 ... 9 over 50
stages). ``split_step`` counts *stochastic* transitions (those with :math:`\varsigma > 0`): a schedule whose last
step lands on :math:`\alpha = 1` (``set_alpha_to_one``) ends with a deterministic step, where siblings cannot
differ, so the branch point moves one step earlier there (:mod:`.rollout`). :func:`scaled_curriculum` fits the
reference's cycle to a shorter schedule.

Every random stream of stage n (prompts, start noise, reflection, prefix, branches, shuffling) is seeded from
(``seed``, n, stream, global row) by numpy's SeedSequence; the reference seeded stage n with ``300 + (n mod 5)``,
so every fifth stage replayed the same noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..sampling.reflective import SELECTIONS
from ..validation import check_choice, check_float, check_int
from .advantages import ADVANTAGE_MODES
from .selection import GAP_SCOPES, SIBLING_SELECTIONS

MIXED_PRECISION = ("no", "fp16", "bf16")
RENAMED = {"reflection_strength": "renoise_strength"}  # old setting -> new name: saved configs get told, not "unknown"


@dataclass
class TrainConfig:
    """SRRL training settings. Defaults are the reference code's (SD1.4, 50 stages of 32 prompts)."""

    # Sampling (all CFG scales are classifier-free guidance weights w).
    steps: int = 20  # DDIM steps of every pass
    rollout_scale: float = 5.0  # CFG of the recorded rollout and of the update's recomputed prediction
    rollout_eta: float = 1.0  # DDIM eta of the recorded rollout (1 = DDPM posterior)
    reflection_scale: float = 3.0  # CFG of the reflective denoising passes
    reflection_eta: float = 0.0  # deterministic reflective passes
    inversion_scale: float = 0.1  # CFG of the condition-guided forward process (DDIM inversion)
    renoise_strength: float = 1.0  # how far back each round re-noises (1 = the whole schedule, the reference)
    reflection_selection: str = "last"  # "last" (reference: no reward between rounds), "best", "softmax"
    score_reflection_rounds: bool = False  # score every round (implied by "best"/"softmax"); logged per round
    reflection_temperature: float = 1.0  # softmax selection temperature
    train_every_round: bool = False  # every round is a recorded rollout of split_time siblings that trains, and each
    # group's best-rewarded sibling is carried into the next round (the paper's figure); False: the rounds are the
    # deterministic reflection above and only the final rollout trains (the reference code)
    advantages_per_round: bool = False  # with train_every_round: each round's rewards get their own baseline (the
    # round's samples of each prompt), so a round-0 sample is judged against fresh samples, not reflected ones

    # Curriculum.
    stages: int = 50
    prompts_per_stage: int = 32  # prompts drawn (with replacement) per stage, across all processes
    split_time: int = 5  # siblings per branching point
    split_step_start: int = 1
    split_step_stride: int = 4
    curriculum_period: int = 5  # split_step cycles with this period
    rounds_every: int = 5  # one more reflective round every this many stages
    max_rounds: int = 9

    groups_per_prompt: int = 1  # branching groups per drawn prompt: each prompt gets groups_per_prompt * split_time samples
    prompt_draws: int = 1  # up to this many draws of prompts_per_stage prompts per stage, the next only while fewer than
    # prompts_per_stage drawn prompts have rewards that differ by min_reward_gap (DAPO's dynamic sampling; 1: off)
    mirror_prompts: bool = False  # draw prompts_per_stage / 2 prompts, each beside its mirror image (left and right
    # swapped) on the same noise: a side prior gains in one and loses in the other (mirror.py)
    seed: int = 300

    # Rewards -> advantages -> selection (advantages.py, selection.py).
    advantage_mode: str = "per_prompt"  # "per_prompt" (DDPO stat tracker), "group" (GRPO), "win_rate" (Pref-GRPO)
    advantage_min_count: int = 16  # a prompt with fewer rewards this stage uses the whole stage's statistics
    advantage_std_floor: float = 0.01  # in reward units: differences below it are not blown up to +-1
    reward_history: int = 0  # earlier stages per prompt in the statistics (the reference: 8; mixes policies)
    sibling_selection: str = "best_worst"  # "best_worst" (B²-DiffuRL: thresholds below) or "all" (every sibling)
    positive_threshold: float = 0.5  # keep a group's best sibling when its advantage >= this
    negative_threshold: float = -0.5  # keep a group's worst sibling when its advantage < this
    min_reward_gap: float = 0.0  # in reward units: a group whose rewards differ less keeps no sibling
    reward_gap_scope: str = "group"  # whose rewards that gap spans: the group's siblings, or all its prompt's samples

    # PPO-clipped update.
    epochs: int = 2
    clip_range: float = 1e-4  # on ratios of mean-over-elements probabilities: DDPO's scale (the reference's 0.1 never binds)
    target_kl: float = 0.0  # stop a stage's update once an optimiser step's mean approx_kl exceeds this (0: never)
    advantage_clip: float = 5.0
    beta_positive: float = 1.0  # advantage weight for kept best siblings (A > 0)
    beta_negative: float = 1.0  # advantage weight for kept worst siblings (A < 0)
    learning_rate: float = 1e-4
    lr_decay_stages: int = 0  # the last this many stages decay the learning rate linearly toward 0 (warmup-stable-decay's
    # decay phase); earlier stages keep learning_rate, so a run can be extended and decayed from any checkpoint
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    trajectories_per_update: int = 64  # gradient accumulation: one optimiser step per this many kept trajectories
    micro_batch_size: int = 8  # transitions per forward/backward (each row has its own sigma)
    timestep_fraction: float = 1.0  # train on this random fraction of each kept trajectory's transitions
    kl_coef: float = 0.0  # KL penalty to the frozen base model (0: off, as the reference)
    ema_decay: float = 0.0  # EMA of the LoRA weights (0: off)

    # LoRA.
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: tuple[str, ...] | None = None  # module-name suffixes; None: the model's own list (PolicyModel)
    lora_conv: bool = False  # also adapt the resnets' 3x3 convolutions

    # Precision and memory.
    mixed_precision: str = "no"  # autocast dtype of the update: "no", "fp16" (with a grad scaler), "bf16"
    gradient_checkpointing: bool = False

    # Output.
    output_dir: str = "runs/srrl"
    lora_name: str = "srrl_lora"
    checkpoint_every: int = 1  # stages
    keep_checkpoints: int = 2
    resume: bool = True  # continue from output_dir's latest checkpoint when there is one
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)
        self.validate()

    def validate(self) -> "TrainConfig":
        for name, low in (
            ("steps", 1), ("stages", 1), ("prompts_per_stage", 1), ("split_time", 1), ("split_step_start", 1),
            ("split_step_stride", 0), ("curriculum_period", 1), ("rounds_every", 1), ("max_rounds", 0), ("seed", 0),
            ("groups_per_prompt", 1), ("prompt_draws", 1), ("lr_decay_stages", 0), ("advantage_min_count", 1), ("reward_history", 0), ("epochs", 1), ("trajectories_per_update", 1), ("micro_batch_size", 1),
            ("lora_rank", 1), ("checkpoint_every", 1), ("keep_checkpoints", 1),
        ):  # fmt: skip
            check_int(name, getattr(self, name), low)
        for name, low, high in (
            ("rollout_scale", 0.0, None), ("reflection_scale", 0.0, None), ("inversion_scale", 0.0, None),
            ("reflection_eta", 0.0, 1.0), ("renoise_strength", 0.0, 1.0), ("reflection_temperature", 1e-6, None),
            ("clip_range", 0.0, 1.0), ("target_kl", 0.0, None), ("advantage_std_floor", 0.0, None),
            ("min_reward_gap", 0.0, None), ("advantage_clip", 0.0, None), ("beta_positive", 0.0, None),
            ("beta_negative", 0.0, None), ("learning_rate", 0.0, 1.0), ("adam_beta1", 0.0, 0.999999),
            ("adam_beta2", 0.0, 0.999999), ("weight_decay", 0.0, 1.0), ("adam_epsilon", 0.0, 1.0),
            ("max_grad_norm", 0.0, None), ("timestep_fraction", 1e-6, 1.0), ("kl_coef", 0.0, None),
            ("ema_decay", 0.0, 0.999999), ("lora_alpha", 1e-6, None),
        ):  # fmt: skip
            check_float(name, getattr(self, name), low, high)
        check_float("rollout_eta", self.rollout_eta, 1e-3, 1.0)  # PPO needs a stochastic rollout
        check_float("positive_threshold", self.positive_threshold)
        check_float("negative_threshold", self.negative_threshold, high=self.positive_threshold)
        check_choice("reflection_selection", self.reflection_selection, SELECTIONS)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_choice("advantage_mode", self.advantage_mode, ADVANTAGE_MODES)
        check_choice("sibling_selection", self.sibling_selection, SIBLING_SELECTIONS)
        check_choice("reward_gap_scope", self.reward_gap_scope, GAP_SCOPES)
        if self.lora_targets is not None and (not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets)):
            raise ValueError(f"lora_targets must be a non-empty list of module-name suffixes, got {self.lora_targets!r}")
        if self.mirror_prompts and self.prompts_per_stage % 2:
            raise ValueError(f"prompts_per_stage must be even with mirror_prompts (prompt, mirror image), got {self.prompts_per_stage}")
        if self.train_every_round and self.prompt_draws > 1:
            raise ValueError(f"train_every_round needs prompt_draws = 1 (each round already samples every group again), "
                             f"got {self.prompt_draws}")  # fmt: skip
        largest = self.split_step(self.curriculum_period - 1)
        if largest > self.steps:
            raise ValueError(
                f"split_step_start + split_step_stride * (curriculum_period - 1) must be <= steps ({self.steps}), "
                f"got {largest}"
            )
        return self

    # The curriculum -------------------------------------------------------------------------------------------

    def split_step(self, stage: int) -> int:
        """How many final stochastic denoising steps stage ``stage`` branches and trains."""
        return self.split_step_start + self.split_step_stride * (stage % self.curriculum_period)

    def rounds(self, stage: int) -> int:
        """Reflective rounds K before the recorded rollout of stage ``stage``."""
        return min(stage // self.rounds_every, self.max_rounds)

    def images_per_group(self, stage: int) -> int:
        """Images one group samples in stage ``stage``: every round's (K + 1 branched rollouts when each round trains,
        else K reflective passes) plus the final siblings."""
        rounds = self.rounds(stage)
        return (rounds + 1) * self.split_time if self.train_every_round else rounds + self.split_time

    def learning_rate_at(self, stage: int) -> float:
        """The learning rate of stage ``stage``: ``learning_rate``, times (stages - stage) / (lr_decay_stages + 1) in the
        last ``lr_decay_stages`` stages (so the last stage still takes a step, the smallest)."""
        remaining = self.stages - stage
        if remaining > self.lr_decay_stages:
            return self.learning_rate
        return self.learning_rate * remaining / (self.lr_decay_stages + 1)

    @property
    def scores_rounds(self) -> bool:
        return self.score_reflection_rounds or self.reflection_selection != "last"

    # Serialisation --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["lora_targets"] = list(self.lora_targets) if self.lora_targets is not None else None
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a mapping, rejecting unknown keys by name."""
        renamed = sorted(set(values) & set(RENAMED))
        if renamed:
            raise ValueError("; ".join(f"training setting {old!r} was renamed to {RENAMED[old]!r}" for old in renamed))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; valid settings are {sorted(known)}")
        return cls(**values)


def scaled_curriculum(steps: int) -> dict:
    """Split-step settings for a ``steps``-step schedule: the reference's cycle 1, 5, 9, 13, 17 (20 steps),
    compressed to fit shorter schedules. Only ``steps - 1`` steps are counted: a schedule that ends on alpha = 1
    (ComfyUI's, ``set_alpha_to_one``) has a deterministic last step."""
    stochastic = max(1, steps - 1)
    period = min(5, stochastic)
    stride = max(1, min(4, (stochastic - 1) // max(1, period - 1)))
    return {"split_step_start": 1, "curriculum_period": period, "split_step_stride": stride}


__all__ = ["MIXED_PRECISION", "TrainConfig", "scaled_curriculum"]
