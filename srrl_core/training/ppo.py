r"""The PPO step on DDIM transitions (Schulman et al., 2017; DDPO, Black et al., 2023): the kept transitions,
their clipped-surrogate losses, and the optimisation over them.

For a recorded transition :math:`x_t \to x_{t-1}` with log-probability :math:`\log p_{old}` under the rollout policy
and a recomputed :math:`\log p_\theta` (both Gaussian, mean over latent elements):

.. math::
    \rho = \exp(\log p_\theta - \log p_{old}),\qquad
    \hat A = \beta_{\pm}\,\mathrm{clip}(A, -c_A, c_A),\qquad
    \ell = \max\big(-\hat A\rho,\ -\hat A\,\mathrm{clip}(\rho, 1 - \epsilon, 1 + \epsilon)\big)

with :math:`\beta_+` for :math:`A > 0` and :math:`\beta_-` otherwise (reference: 1, 1; :math:`c_A = 5`,
:math:`\epsilon = 0.1`). The optional KL penalty to the frozen base model compares the two Gaussian transitions,
which share the variance :math:`\varsigma^2`:

.. math::  \mathrm{KL}\big(\mathcal N(\mu_\theta, \varsigma^2 I)\,\|\,\mathcal N(\mu_{ref}, \varsigma^2 I)\big) / d
           = \frac{\lVert\mu_\theta - \mu_{ref}\rVert^2}{2\varsigma^2 d}

(the mean over the d latent elements, matching the log-probabilities' convention).

:class:`PPOUpdate` runs one stage's update: ``epochs`` shuffled passes over the kept transitions, in micro-batches
(each row at its own noise level), one optimiser step per ``trajectories_per_update`` kept trajectories' worth of
transitions (gradient accumulation; gradients summed over processes once per step), the gradient norm clipped; with
``target_kl`` the update stops, before stepping, once a step's transitions show a mean approx_kl above it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..sampling.ddim import ddim_log_prob, ddim_mean, transition_std
from ..sampling.parametrization import Parametrization
from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .lora import LoraEMA, adapters_disabled
from .policy import PolicyModel, take_rows
from .rollout import Rollout


def clip_advantages(advantages: torch.Tensor, clip: float = 5.0, beta_positive: float = 1.0, beta_negative: float = 1.0) -> torch.Tensor:
    """:math:`\\beta_\\pm\\,\\mathrm{clip}(A, -c, c)`."""
    clipped = advantages.clamp(-clip, clip)
    return clipped * torch.where(clipped > 0, beta_positive, beta_negative).to(clipped.dtype)


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-transition clipped surrogate loss [B] and the ratio [B]; ``advantages`` already clipped and weighted."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


def transition_kl(
    param: Parametrization,
    x: torch.Tensor,
    denoised: torch.Tensor,
    reference: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    """KL [B] (mean over elements) between the DDIM transitions implied by two clean predictions."""
    std = transition_std(param, sigma, sigma_next, eta)
    mean = ddim_mean(param, x, denoised, sigma, sigma_next, std)
    mean_ref = ddim_mean(param, x, reference, sigma, sigma_next, std)
    sq = (mean - mean_ref).pow(2).mean(dim=tuple(range(1, x.ndim)))
    return sq / (2 * std.pow(2))


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """DDPO's estimate 0.5 (log p - log p_old)^2, per transition."""
    return 0.5 * (log_prob - old_log_prob).pow(2)


@dataclass
class Transitions:
    """Kept transitions on one process, flattened over (trajectory, step)."""

    latents: torch.Tensor  # [T, C, h, w]
    next_latents: torch.Tensor
    sigmas: torch.Tensor  # [T]
    next_sigmas: torch.Tensor
    log_probs: torch.Tensor  # [T] rollout log-probabilities
    advantages: torch.Tensor  # [T] clipped and weighted
    rows: torch.Tensor  # [T] local prompt index (conditioning row)

    def __len__(self) -> int:
        return self.sigmas.shape[0]

    def take(self, index: torch.Tensor) -> "Transitions":
        return Transitions(*(t[index.to(t.device)] for t in vars(self).values()))


def kept_transitions(
    rollout: Rollout, keep: torch.Tensor, advantages: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> Transitions:
    """The trainable transitions of kept siblings (optionally a random ``timestep_fraction`` of each)."""
    siblings = rollout.siblings
    steps = rollout.trainable.nonzero().flatten().cpu()
    per_trajectory = max(1, round(config.timestep_fraction * steps.numel())) if steps.numel() else 0
    step_index, row_index = [], []
    for row in keep.flatten().nonzero().flatten().tolist():
        chosen = steps if per_trajectory == steps.numel() else steps[torch.randperm(steps.numel(), generator=generator)[:per_trajectory]]
        step_index.append(chosen)
        row_index.append(torch.full_like(chosen, row))
    s = torch.cat(step_index) if step_index else torch.zeros(0, dtype=torch.long)
    r = torch.cat(row_index) if row_index else torch.zeros(0, dtype=torch.long)
    weighted = clip_advantages(advantages, config.advantage_clip, config.beta_positive, config.beta_negative)
    sd, rd = s.to(rollout.latents.device), r.to(rollout.latents.device)  # the whole rollout lives on one device
    return Transitions(
        rollout.latents[sd, rd], rollout.next_latents[sd, rd], rollout.sigmas[sd], rollout.next_sigmas[sd],
        rollout.log_probs[sd, rd].float(), weighted[r].float(), r // siblings,
    )  # fmt: skip


def transition_losses(
    policy: PolicyModel, cond, batch: Transitions, config: TrainConfig, autocast: Callable = contextlib.nullcontext
) -> tuple[torch.Tensor, dict]:
    """Per-transition losses [B] (clipped surrogate + KL penalty) of a micro-batch, with the graph for backward.

    One guided model call evaluates all B transitions, each at its own noise level (2B network rows with CFG).
    """
    param, device = policy.parametrization, policy.device
    x, x_next = batch.latents.to(device).float(), batch.next_latents.to(device).float()
    sigma, sigma_next = batch.sigmas.to(device), batch.next_sigmas.to(device)
    guided = policy.guided(take_rows(cond, batch.rows))
    with autocast():
        denoised = guided(x, sigma, config.rollout_scale).float()
    log_prob = ddim_log_prob(param, x, denoised, sigma, sigma_next, x_next, config.rollout_eta)
    old = batch.log_probs.to(device)
    losses, ratio = ppo_clip_loss(log_prob, old, batch.advantages.to(device), config.clip_range)
    stats = {
        "loss": float(losses.detach().sum()), "approx_kl": float(approx_kl(log_prob.detach(), old).sum()),
        "clip_fraction": float(((ratio.detach() - 1).abs() > config.clip_range).float().sum()),
        "ratio": float(ratio.detach().sum()), "kl": 0.0,
    }  # fmt: skip
    if config.kl_coef > 0:
        with torch.no_grad(), adapters_disabled(policy.network), autocast():
            reference = guided(x, sigma, config.rollout_scale).float()
        kl = transition_kl(param, x, denoised, reference, sigma, sigma_next, config.rollout_eta)
        losses = losses + config.kl_coef * kl
        stats["kl"] = float(kl.detach().sum())
    return losses, stats


def update_attention(device: torch.device):
    """The attention kernels of the update (forward and backward; gradient checkpointing recomputes inside it): on
    CUDA every scaled-dot-product backend but cuDNN's, whose backward (torch 2.11, H200) failed with an illegal memory
    access at Flux's shape while flash and memory-efficient attention ran with the same memory (docs/performance.md,
    "GPU"); elsewhere torch's own choice. Sampling keeps torch's choice: the cuDNN forward ran."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the stage and step."""


class PPOUpdate:
    """AdamW on the LoRA parameters (with a grad scaler for fp16 and an optional EMA), and one stage's update
    over its kept transitions (:meth:`run`).

    ``dist`` sums across processes (:mod:`.distributed`); ``on_step(stage=, epoch=, step=, grad_norm=, loss=)`` is
    called once per optimiser step with the gradients synchronised and clipped, before the step.
    """

    def __init__(self, policy: PolicyModel, params: list[torch.nn.Parameter], config: TrainConfig, dist, *,
                 autocast: Callable = contextlib.nullcontext, on_step: Callable[..., None] | None = None):  # fmt: skip
        self.policy, self.params, self.config, self.dist = policy, params, config, dist
        self.autocast, self.on_step = autocast, on_step
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                           weight_decay=config.weight_decay, eps=config.adam_epsilon)  # fmt: skip
        self.scaler = torch.amp.GradScaler(policy.device.type) if config.mixed_precision == "fp16" else None
        self.ema = LoraEMA(params, config.ema_decay) if config.ema_decay > 0 else None
        self.steps = 0  # optimiser steps of the whole run (checkpointed)

    def run(self, samples: Transitions, cond, stage: int, generator: torch.Generator, per_update: int) -> dict:
        """``epochs`` shuffled passes; one optimiser step per ``per_update`` transitions (global). Returns the
        stage's update metrics, ``lora_change`` (the L2 norm of the parameters' change) among them."""
        config, dist = self.config, self.dist
        before = [p.detach().clone() for p in self.params]
        learning_rate = config.learning_rate_at(stage)
        for group in self.optimizer.param_groups:  # per stage (and not from a resumed optimiser's state)
            group["lr"] = learning_rate
        total = int(dist.all_reduce_sum_(torch.tensor([len(samples)], dtype=torch.float64))[0])
        steps_per_epoch = max(1, math.ceil(total / per_update))
        sums = {"loss": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0, "kl": 0.0, "ratio": 0.0}
        grad_norms, seen, stopped = [], 0, False
        for epoch in range(config.epochs):
            if stopped:
                break
            order = torch.randperm(len(samples), generator=generator)
            chunks = torch.tensor_split(order, steps_per_epoch)
            step_sizes = dist.all_reduce_sum_(torch.tensor([float(len(c)) for c in chunks], dtype=torch.float64))
            for step, chunk in enumerate(chunks):
                loss_sum = torch.zeros((), dtype=torch.float64)
                step_kl = 0.0
                for micro in chunk.split(config.micro_batch_size):
                    loss, stats = self._micro_batch(samples.take(micro), cond, float(step_sizes[step]))
                    loss_sum += float(loss.detach()) * float(step_sizes[step])
                    step_kl += stats["approx_kl"]
                    for key, value in stats.items():
                        sums[key] += value
                seen += int(step_sizes[step])
                if config.target_kl > 0:
                    mean_kl = float(dist.all_reduce_sum_(torch.tensor([step_kl], dtype=torch.float64))[0]) / float(step_sizes[step])
                    if mean_kl > config.target_kl:  # the policy already left the trust region: no step from here
                        self.optimizer.zero_grad(set_to_none=True)
                        stopped = True
                        break
                grad_norms.append(self._step(stage, epoch, step, loss_sum))
        out = {f"{k}_mean": float(dist.all_reduce_sum_(torch.tensor([v], dtype=torch.float64))[0]) / seen for k, v in sums.items()}
        if config.kl_coef == 0:
            del out["kl_mean"]
        out["grad_norm_mean"] = float(np.mean(grad_norms)) if grad_norms else 0.0
        out["optimizer_steps"] = len(grad_norms)
        out["learning_rate"] = learning_rate
        out["early_stopped"] = int(stopped)
        out["lora_change"] = float(sum((p.detach() - b).float().pow(2).sum() for p, b in zip(self.params, before)) ** 0.5)
        return out

    def _micro_batch(self, batch: Transitions, cond, step_total: float) -> tuple[torch.Tensor, dict]:
        """Forward + backward of one micro-batch; the loss is divided by the step's global transition count."""
        with update_attention(self.policy.device):
            losses, stats = transition_losses(self.policy, cond, batch, self.config, self.autocast)
            loss = losses.sum() / step_total
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss, stats

    def _step(self, stage: int, epoch: int, step: int, loss_sum: torch.Tensor) -> float:
        """Sum gradients (and the loss, to check it) over processes, clip, step."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.flatten().double() for g in grads] + [loss_sum.reshape(1).to(grads[0].device)])
        flat = self.dist.all_reduce_sum_(flat)
        if not torch.isfinite(flat[-1]):
            last = latest_checkpoint(self.config.output_dir)
            raise TrainingDiverged(
                f"non-finite loss at stage {stage}, epoch {epoch}, optimiser step {step} of the stage; the last good "
                f"checkpoint is {last or 'none (no stage completed yet)'}"
            )
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(p.dtype)
            offset += g.numel()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm))
        if not math.isfinite(norm) and self.scaler is None:  # with fp16 the scaler skips such steps
            raise TrainingDiverged(f"non-finite gradient norm at stage {stage}, epoch {epoch}, optimiser step {step}; "
                                   f"the last good checkpoint is {latest_checkpoint(self.config.output_dir)}")
        if self.on_step is not None:
            self.on_step(stage=stage, epoch=epoch, step=step, grad_norm=norm, loss=float(flat[-1]))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.steps += 1
        return norm
