r"""The SRRL trainer: stages of reflective rollouts with branching, selection and PPO-clipped LoRA updates.

One stage n (see :mod:`.rollout`, :mod:`.selection`, :mod:`.ppo`):

1. draw ``prompts_per_stage`` prompts, each for ``groups_per_prompt`` groups; each process samples its share of
   the groups: K(n) reflective rounds, then a rollout that forks into G siblings for the last split_step(n)
   stochastic steps (with ``prompt_draws`` > 1, more draws while too few prompts have rewards that differ);
2. score the siblings' decoded images, gather the scores of all processes and turn them into advantages
   (:mod:`.advantages`: per prompt with a batch fallback and a std floor, per group, or by win rate);
3. keep each group's best sibling if :math:`A \ge \tau_+` and its worst if :math:`A < \tau_-`, when the group's
   rewards (or its prompt's: ``reward_gap_scope``) differ by at least ``min_reward_gap`` (:mod:`.selection`);
4. the PPO update (:class:`.ppo.PPOUpdate`): ``epochs`` passes over the kept transitions in shuffled micro-batches
   (each row at its own noise level): recompute the CFG-guided prediction with LoRA, :math:`\log p_\theta` by
   :func:`srrl_core.sampling.ddim_log_prob`, the clipped surrogate (plus the optional KL penalty), and take an
   AdamW step every ``trajectories_per_update`` kept trajectories' worth of transitions, clipping the gradient
   norm; with ``target_kl`` the update stops, before stepping, once a step's transitions show a mean approx_kl
   above it;
5. log the stage's metrics (and checkpoint, every ``checkpoint_every`` stages).

A stage that keeps nothing logs a warning saying why and skips its update; stages whose update changed nothing
(no kept transition, zero gradient, zero LoRA change) are counted as ``noop_stages`` in the summary, and a run
whose LoRA never moved ends with a warning naming the likely cause. A non-finite loss stops training with
:class:`.ppo.TrainingDiverged` naming the stage and step; the last checkpoint (written only at the end of good
stages) stays the latest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..sampling.reflective import planned_model_calls
from ..sampling.renoise import renoise_start
from .advantages import AdvantageEstimator
from .checkpoint import latest_checkpoint, load_checkpoint, model_fingerprint, same_model, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import SingleProcess
from .export import check_lora_name, export_lora
from .lora import add_lora, load_lora_state_dict, lora_parameters, lora_state_dict
from .metrics import MetricsWriter
from .mirror import mirror_prompt
from .policy import PolicyModel
from .ppo import PPOUpdate, kept_transitions
from .rollout import GLOBAL, PROMPTS, SHUFFLE, Rollout, collect_rollout, concat_rollouts, continue_round, derive_seed, stochastic_steps
from .selection import informative_prompts, reward_spread, select_siblings

logger = logging.getLogger(__name__)

Callback = Callable[[str, dict], None]  # (event, info); raise from it to stop training
RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]  # (images [B, H, W, 3] in [0, 1], prompts) -> [B]


class SRRLTrainer:
    """Train a LoRA on ``policy`` with SRRL. Construct, then :meth:`train`.

    Args:
        policy: the model bundle (:class:`PolicyModel`); LoRA is injected into ``policy.network`` here.
        reward: ``reward(images, prompts) -> Tensor[B]``, e.g. any :class:`srrl_core.rewards.Reward`.
        prompts: the training prompts; each stage draws ``prompts_per_stage`` of them with replacement.
        config: :class:`TrainConfig` (reference defaults when omitted).
        distributed: :class:`~.distributed.AccelerateProcesses` for several processes; one process by default.
        callbacks: ``callback(event, info)`` for "stage_start", "model_call", "optimizer_step" (gradients
            synchronised and clipped, before the step), "stage_end" and "checkpoint". Raising stops training.
    """

    def __init__(
        self,
        policy: PolicyModel,
        reward: RewardFn,
        prompts: Sequence[str],
        config: TrainConfig | None = None,
        *,
        distributed=None,
        callbacks: Sequence[Callback] = (),
    ):
        self.config = config = (config or TrainConfig()).validate()
        prompts = list(prompts) if not isinstance(prompts, str) else [prompts]
        if not prompts:
            raise ValueError("prompts must hold at least one non-empty prompt, got an empty list")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompts[{i}] must be a non-empty string, got {prompt!r}")
        check_lora_name(config.lora_name)
        if policy.steps != config.steps:
            raise ValueError(f"policy.sigmas must hold steps + 1 = {config.steps + 1} levels, got {policy.sigmas.numel()}")
        self.dist = distributed or SingleProcess()
        groups = config.prompts_per_stage * config.groups_per_prompt
        if groups % self.dist.world_size:
            raise ValueError(f"prompts_per_stage * groups_per_prompt ({groups}) must be a multiple of the number of "
                             f"processes ({self.dist.world_size})")  # fmt: skip
        self._check_curriculum(policy, config)
        self.policy, self.reward, self.prompts = policy, reward, prompts
        self.callbacks = list(callbacks)
        self.fingerprint = model_fingerprint(policy.network)  # before injection: base weights only
        self.params = add_lora(policy.network, rank=config.lora_rank, alpha=config.lora_alpha, targets=config.lora_targets or policy.lora_targets,
                               key_style=policy.lora_key_style, conv=config.lora_conv, seed=config.seed)  # fmt: skip
        if config.gradient_checkpointing:
            if not hasattr(policy.network, "enable_gradient_checkpointing"):
                raise ValueError("gradient_checkpointing needs a network with enable_gradient_checkpointing() (diffusers models)")
            policy.network.enable_gradient_checkpointing()
        self.ppo = PPOUpdate(policy, self.params, config, self.dist, autocast=self._autocast,
                             on_step=lambda **info: self._emit("optimizer_step", **info))  # fmt: skip
        self.advantages = AdvantageEstimator(config.advantage_mode, min_count=config.advantage_min_count,
                                             std_floor=config.advantage_std_floor, history=config.reward_history)
        self.stage = 0
        self.history: list[dict] = []
        self.metrics = MetricsWriter(config.output_dir, config.tensorboard, enabled=self.dist.is_main)
        self.resumed_from = self._resume() if config.resume else None

    # Public API -------------------------------------------------------------------------------------------------

    def train(self, stages: int | None = None) -> dict:
        """Run stages ``self.stage`` ... until ``config.stages`` (or ``stages`` more); returns a summary."""
        end = self.config.stages if stages is None else min(self.config.stages, self.stage + stages)
        start, started = self.stage, time.perf_counter()
        bar = _progress(range(start, end), self.config.progress and self.dist.is_main)
        try:
            for stage in bar:
                metrics = self.run_stage(stage)
                self.stage = stage + 1
                if self.stage % self.config.checkpoint_every == 0 or self.stage == end:
                    self.save_checkpoint()
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", kept=metrics["kept_trajectories"])
        finally:
            if hasattr(bar, "close"):
                bar.close()
        lora_path = self.export_lora() if self.dist.is_main and self.stage == self.config.stages else None
        self.dist.barrier()
        ran = [h for h in self.history if h["stage"] >= start]
        summary = {
            "stages_run": len(ran), "stage": self.stage, "stages": self.config.stages,
            "resumed_from": self.resumed_from, "optimizer_steps": self.ppo.steps,
            "kept_trajectories": sum(h["kept_trajectories"] for h in ran),
            "skipped_updates": sum(1 for h in ran if h["kept_transitions"] == 0),
            "noop_stages": sum(1 for h in ran if h["noop"]),
            "reward_mean_first": ran[0]["reward_mean"] if ran else None,
            "reward_mean_last": ran[-1]["reward_mean"] if ran else None,
            "model_calls": sum(h["model_calls"] for h in ran), "seconds": time.perf_counter() - started,
            "lora_path": lora_path, "output_dir": self.config.output_dir,
        }  # fmt: skip
        if ran and summary["noop_stages"] == len(ran):
            logger.warning(
                "SRRL training changed nothing: in all %d stage(s) the LoRA did not move. Likely causes: a reward that "
                "does not vary between siblings (constant or saturated), thresholds / min_reward_gap that keep no "
                "sibling, learning_rate 0, or a model whose output does not depend on the LoRA layers", len(ran))
        logger.info("SRRL training finished: %s", summary)
        return summary

    def run_stage(self, stage: int) -> dict:
        """One stage: sample, score, advantages, select, PPO update, log; returns its metrics."""
        config, dist = self.config, self.dist
        _seed_everything(derive_seed(config.seed, stage, GLOBAL, dist.rank))
        started = time.perf_counter()
        split_step, rounds = config.split_step(stage), config.rounds(stage)
        self._emit("stage_start", stage=stage, split_step=split_step, rounds=rounds,
                   planned_model_calls=planned_model_calls(config.steps, rounds, config.renoise_strength))  # fmt: skip
        all_prompts, prompts, cond, rollout, rewards, local_rows = self.sample_stage(stage)
        groups = config.prompts_per_stage * config.groups_per_prompt
        draws = len(all_prompts) // groups // (rounds + 1 if config.train_every_round else 1)

        # Advantages over the whole stage (all processes), then this process's rows.
        row_prompts = [p for p in all_prompts for _ in range(config.split_time)]
        blocks = rounds + 1 if config.train_every_round and config.advantages_per_round else 1  # round-major blocks
        size = rewards.numel() // blocks
        advantages = torch.cat([self.advantages(rewards[i : i + size], row_prompts[i : i + size], group_size=config.split_time)
                                for i in range(0, rewards.numel(), size)])  # fmt: skip
        local_adv = advantages[local_rows]
        local = len(prompts)

        # Select the siblings that train; their stochastic transitions are the PPO samples.
        spread = reward_spread(rewards, self._gap_keys(row_prompts))[local_rows].view(local, config.split_time)[:, 0]
        keep = select_siblings(local_adv.view(local, config.split_time), config.positive_threshold, config.negative_threshold,
                               spread, config.min_reward_gap, config.sibling_selection)  # fmt: skip
        shuffle = torch.Generator().manual_seed(derive_seed(config.seed, stage, SHUFFLE, dist.rank))
        samples = kept_transitions(rollout, keep, local_adv, config, shuffle)
        counts = dist.all_reduce_sum_(torch.tensor([int(keep.sum()), len(samples)], dtype=torch.float64))
        kept, transitions = int(counts[0]), int(counts[1])
        metrics = {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
            "reward_max": float(rewards.max()), "reward_min": float(rewards.min()),
            "kept_trajectories": kept, "kept_transitions": transitions, "split_step": split_step,
            "reflection_rounds": rounds, "model_calls": rollout.model_calls, "prompt_draws": draws,
            "sampled_images": draws * groups * config.images_per_group(stage),
        }  # fmt: skip
        for k, scores in enumerate(rollout.round_scores):
            metrics[f"round_reward_mean/{k}"] = float(dist.gather(scores.float()).mean())
        if config.train_every_round:  # rounds are round-major blocks of the stage's rewards
            for k, scores in enumerate(rewards.view(rounds + 1, -1)):
                metrics[f"round_reward_mean/{k}"] = float(scores.mean())

        # The PPO update: one optimiser step per trajectories_per_update kept trajectories' worth of transitions.
        if kept == 0:
            logger.warning("stage %d kept no trajectory: no group passed selection (%s, thresholds %+g / %+g, reward gap "
                           ">= %g over each %s); skipping its update", stage, config.sibling_selection,
                           config.positive_threshold, config.negative_threshold, config.min_reward_gap,
                           config.reward_gap_scope)  # fmt: skip
        elif transitions == 0:
            logger.warning("stage %d kept %d trajectories but none of their transitions is stochastic (split step %d); "
                           "skipping its update", stage, kept, split_step)  # fmt: skip
        else:
            per_update = max(1, round(config.trajectories_per_update * (transitions / kept)))
            metrics.update(self.ppo.run(samples, cond, stage, shuffle, per_update))

        # Log.
        metrics["noop"] = metrics.get("lora_change", 0.0) == 0.0
        metrics["seconds"] = time.perf_counter() - started
        self.history.append({"stage": stage, **metrics})
        self.metrics.write(stage, metrics)
        self._emit("stage_end", stage=stage, metrics=metrics)
        return metrics

    def stage_prompts(self, stage: int, draw: int = 0) -> list[str]:
        """The prompt of every group of stage ``stage`` (draw ``draw``) across all processes: ``prompts_per_stage``
        prompts drawn with replacement (seeded by the stage and draw), each repeated for its ``groups_per_prompt``
        groups."""
        config = self.config
        keys = (config.seed, stage, PROMPTS) + ((draw,) if draw else ())
        g = torch.Generator().manual_seed(derive_seed(*keys))
        if config.mirror_prompts:
            drawn = torch.randint(len(self.prompts), (config.prompts_per_stage // 2,), generator=g).tolist()
            prompts = [p for i in drawn for p in (self.prompts[i], mirror_prompt(self.prompts[i]))]
        else:
            drawn = torch.randint(len(self.prompts), (config.prompts_per_stage,), generator=g).tolist()
            prompts = [self.prompts[i] for i in drawn]
        return [p for p in prompts for _ in range(config.groups_per_prompt)]

    def noise_rows(self, groups: int, draw: int = 0) -> list[int]:
        """The noise row of each of a draw's ``groups`` groups: its own, except that with ``mirror_prompts`` a mirror
        image's groups reuse the noise of its original's, so the pair differs only in the prompt."""
        first, per_prompt = draw * groups, self.config.groups_per_prompt
        if not self.config.mirror_prompts:
            return list(range(first, first + groups))
        return [first + g // (2 * per_prompt) * 2 * per_prompt + g % per_prompt for g in range(groups)]

    def sample_stage(self, stage: int) -> tuple[list[str], list[str], object, Rollout, torch.Tensor, torch.Tensor]:
        """Roll out and score stage ``stage``'s groups; returns (every group's prompt across processes, this process's,
        their conditioning, its rollout, all rewards, the rows of this process's rewards among them). With
        ``train_every_round`` each round's rollout joins them as groups of their own (round-major).

        With ``prompt_draws`` > 1 this is DAPO's dynamic sampling: while fewer than ``prompts_per_stage`` of the
        prompts drawn so far are informative (:func:`.selection.informative_prompts`: some samples differ by at least
        ``min_reward_gap``), draw ``prompts_per_stage`` more with fresh noise. A prompt every sample of which
        solves, or fails, has a zero advantage everywhere and would leave the stage with fewer lessons."""
        config, dist = self.config, self.dist
        all_prompts, prompts, parts, rewards, local_rows = [], [], [], [], []
        for draw in range(config.prompt_draws):
            drawn = self.stage_prompts(stage, draw)
            local = len(drawn) // dist.world_size
            first = dist.rank * local
            mine = drawn[first : first + local]
            rows = self.noise_rows(len(drawn), draw)[first : first + local]
            with torch.no_grad():
                cond = self.policy.encode(mine)
            with self._autocast():
                part = collect_rollout(self.policy, cond, mine, config, stage, rows, self._score,
                                       on_step=lambda: self._emit("model_call", stage=stage))  # fmt: skip
            last_round = config.rounds(stage) if config.train_every_round else 0
            for round_index in range(last_round + 1):
                scores = self._score(part.final, mine).float()
                offset = len(all_prompts) * config.split_time
                local_rows.append(torch.arange(offset + first * config.split_time, offset + (first + local) * config.split_time))
                rewards.append(dist.gather(scores))
                all_prompts += drawn
                prompts += mine
                parts.append(part)
                if round_index < last_round:
                    with self._autocast():
                        part = continue_round(self.policy, cond, part, scores, config, stage, rows, round_index + 1,
                                              on_step=lambda: self._emit("model_call", stage=stage))  # fmt: skip
            if draw + 1 < config.prompt_draws and self._informative(torch.cat(rewards), all_prompts) >= config.prompts_per_stage:
                break
        if len(parts) > 1:  # conditioning types differ per model (tensor, dataclass): encode the union again
            with torch.no_grad():
                cond = self.policy.encode(prompts)
        return all_prompts, prompts, cond, concat_rollouts(parts), torch.cat(rewards), torch.cat(local_rows)

    def _informative(self, rewards: torch.Tensor, group_prompts: list[str]) -> int:
        """How many drawn prompts have rewards [rows] that differ (:func:`.selection.informative_prompts`)."""
        row_prompts = [p for p in group_prompts for _ in range(self.config.split_time)]
        spread = reward_spread(rewards, self._gap_keys(row_prompts))
        return informative_prompts(spread, self.config.groups_per_prompt * self.config.split_time, self.config.min_reward_gap)

    def _gap_keys(self, row_prompts: list[str]) -> list:
        """What ``min_reward_gap`` spans for each reward row: its prompt's samples, or its group's siblings."""
        if self.config.reward_gap_scope == "prompt":
            return row_prompts
        return [row // self.config.split_time for row in range(len(row_prompts))]

    def lora_path(self) -> str:
        return os.path.join(self.config.output_dir, f"{self.config.lora_name}.safetensors")

    def export_lora(self, path: str | None = None, key_style: str | None = None, dtype: torch.dtype = torch.float16) -> str:
        """Write the (EMA, when enabled) LoRA as kohya-style safetensors; ``key_style`` "ldm" converts a diffusers
        UNet's names with its config."""
        path = path or self.lora_path()
        style = key_style or self.policy.lora_key_style
        unet_config = getattr(self.policy.network, "config", None)
        meta = {"srrl_stage": self.stage, "srrl_base_model": self.policy.name, "ss_network_dim": self.config.lora_rank,
                "ss_network_alpha": self.config.lora_alpha}  # fmt: skip
        with self.final_weights():
            return export_lora(self.policy.network, path, key_style=style, unet_config=unet_config, dtype=dtype, metadata=meta)

    def final_weights(self):
        """Context: the network holds the weights a run hands out (the LoRA EMA when ``ema_decay`` > 0, else the
        live LoRA) inside the block, the live ones again after it. Export and every evaluation of a trained run use it."""
        return self.ppo.ema.applied() if self.ppo.ema is not None else contextlib.nullcontext()

    def save_checkpoint(self) -> str | None:
        """Checkpoint the completed stages (main process); returns the folder."""
        folder = None
        if self.dist.is_main:
            state = {
                "config": self.config.to_dict(), "fingerprint": self.fingerprint, "base_model": self.policy.name,
                "advantages": self.advantages.state_dict(), "optimizer_steps": self.ppo.steps,
                "scaler": self.ppo.scaler.state_dict() if self.ppo.scaler is not None else None, "history": self.history,
            }  # fmt: skip
            folder = save_checkpoint(
                self.config.output_dir, self.stage, lora=lora_state_dict(self.policy.network),
                ema=self._ema_state(), optimizer=self.ppo.optimizer.state_dict(), state=state, keep=self.config.keep_checkpoints,
            )  # fmt: skip
            self._emit("checkpoint", stage=self.stage, folder=folder)
        self.dist.barrier()
        return folder

    # Internals ----------------------------------------------------------------------------------------------------

    def _score(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Rewards [rows] for clean latents whose rows are prompt-major over ``prompts``."""
        per_prompt = latents.shape[0] // len(prompts)
        row_prompts = [p for p in prompts for _ in range(per_prompt)]
        scores = []
        with torch.no_grad():
            for start in range(0, latents.shape[0], self.config.micro_batch_size):
                chunk = latents[start : start + self.config.micro_batch_size]
                images = self.policy.decode(chunk).float()
                scores.append(torch.as_tensor(self.reward(images, row_prompts[start : start + chunk.shape[0]])).float().cpu())
        return torch.cat(scores)

    def _autocast(self):
        if self.config.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.mixed_precision == "bf16" else torch.float16
        return torch.autocast(self.policy.device.type, dtype=dtype)

    def _ema_state(self) -> dict[str, torch.Tensor] | None:
        if self.ppo.ema is None:
            return None
        with self.ppo.ema.applied():
            return lora_state_dict(self.policy.network)

    def _resume(self) -> str | None:
        folder = latest_checkpoint(self.config.output_dir)
        if folder is None:
            return None
        checkpoint = load_checkpoint(folder)
        if not same_model(checkpoint.state["fingerprint"], self.fingerprint):
            raise ValueError(
                f"the checkpoint in {folder} was trained on a different base model ({checkpoint.state.get('base_model')!r}, "
                f"fingerprint {checkpoint.state['fingerprint']['shapes_sha256'][:12]}) than this one ({self.policy.name!r}, "
                f"{self.fingerprint['shapes_sha256'][:12]}); use another output_dir or resume=False"
            )
        if checkpoint.ema is not None and self.ppo.ema is not None:
            load_lora_state_dict(self.policy.network, checkpoint.ema)
            self.ppo.ema.shadow = [p.detach().clone() for p in lora_parameters(self.policy.network)]
        load_lora_state_dict(self.policy.network, checkpoint.lora)
        self.ppo.optimizer.load_state_dict(checkpoint.optimizer)
        if self.ppo.scaler is not None and checkpoint.state.get("scaler"):
            self.ppo.scaler.load_state_dict(checkpoint.state["scaler"])
        self.advantages.load_state_dict(checkpoint.state.get("advantages", checkpoint.state.get("normalizer")))
        self.stage = checkpoint.stage
        self.ppo.steps = int(checkpoint.state.get("optimizer_steps", 0))
        self.history = list(checkpoint.state.get("history", []))
        set_rng_state(*checkpoint.rng)
        logger.info("resumed from %s at stage %d", folder, self.stage)
        return folder

    @staticmethod
    def _check_curriculum(policy: PolicyModel, config: TrainConfig) -> None:
        """Every stage's split step must fit the stochastic steps its rollout has: checked before any sampling."""
        largest = max(config.split_step(n) for n in range(config.curriculum_period))
        available = stochastic_steps(policy.parametrization, policy.sigmas, config.rollout_eta)
        if largest > available:
            raise ValueError(f"the curriculum's largest split step ({largest}) exceeds the {available} stochastic steps "
                             f"of the {config.steps}-step schedule; lower split_step_start / split_step_stride")  # fmt: skip
        reflecting = [n for n in range(config.stages) if config.rounds(n) > 0]
        if reflecting and config.renoise_strength < 1:
            tail = policy.sigmas[renoise_start(config.steps, config.renoise_strength):]
            available = stochastic_steps(policy.parametrization, tail, config.rollout_eta)
            largest = max(config.split_step(n) for n in reflecting[: config.curriculum_period])
            if largest > available:
                raise ValueError(
                    f"renoise_strength ({config.renoise_strength}) leaves {available} stochastic steps after "
                    f"re-noising, fewer than the largest split step of a reflecting stage ({largest}); raise "
                    "renoise_strength or lower split_step_start / split_step_stride"
                )

    def _emit(self, event: str, **info) -> None:
        for callback in self.callbacks:
            callback(event, info)


def _seed_everything(seed: int) -> None:
    """Each stage starts every global generator from its own seed (LoRA dropout, user rewards), so a stage
    replays exactly after a resume."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _progress(iterable, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc="SRRL stages", unit="stage")
