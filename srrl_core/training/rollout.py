r"""One stage's samples: reflective rounds, then a recorded rollout that branches near its end.

For P prompts (rows prompt-major throughout):

1. **Reflection** (no gradients, current policy): K rounds of deterministic DDIM at CFG ``reflection_scale`` and
   DDIM inversion at CFG ``inversion_scale`` (:func:`srrl_core.sampling.reflect`), from
   :math:`x_T \sim \mathcal N(0, I)`. Optionally every round is scored and the best candidate carried on.
2. **Recorded rollout** from the reflected latent: DDIM with ``rollout_eta`` at CFG ``rollout_scale``. Its first
   :math:`N - \text{split\_step}` steps run once per prompt (the shared prefix); there each trajectory forks into
   G = ``split_time`` siblings that finish the schedule with independent noise, recording latents, next latents
   and log-probabilities of their transitions. The branch point leaves ``split_step`` *stochastic* transitions
   after it (:func:`branch_point`): a deterministic step cannot make siblings differ.

With ``train_every_round`` the rounds are themselves recorded rollouts (the paper's figure: every round's samples
are scored and trained): round 0 is the recorded rollout of step 2, started from :math:`x_T \sim \mathcal N(0, I)`
without reflection, and :func:`continue_round` carries each group's best-rewarded sibling back with the
condition-guided forward process and rolls out round k + 1 from it.

Every random stream is seeded from (run seed, stage, stream, global row), so a row's samples do not depend on how
the rows are split over processes or batches, and a stage replays exactly after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..sampling.ddim import transition_std
from ..sampling.noise import BranchNoise
from ..sampling.reflective import reflect
from ..sampling.renoise import renoise
from ..sampling.samplers import OnStep, prior_latent, sample
from .config import TrainConfig
from .policy import PolicyModel

# Random streams of a stage.
PROMPTS, START, REFLECTION, PREFIX, BRANCH, SHUFFLE, GLOBAL = range(7)


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed for a tuple of non-negative integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def stochastic_mask(param, sigmas: torch.Tensor, eta: float) -> torch.Tensor:
    """Bool [N]: which transitions of the schedule ``sigmas`` [N + 1] draw noise (varsigma > 0)."""
    return transition_std(param, sigmas[:-1].float(), sigmas[1:].float(), eta) > 0


def stochastic_steps(param, sigmas: torch.Tensor, eta: float) -> int:
    return int(stochastic_mask(param, sigmas, eta).sum())


def branch_point(param, sigmas: torch.Tensor, split_step: int, eta: float) -> int | None:
    """The step index where siblings fork so that ``split_step`` stochastic transitions follow (None: too few).
    Deterministic steps (e.g. the last one onto alpha = 1) are never counted: siblings cannot differ there."""
    stochastic = stochastic_mask(param, sigmas, eta).nonzero().flatten()
    if split_step > stochastic.numel():
        return None
    return int(stochastic[-split_step])


def row_noise(seed: int, stage: int, stream: int, rows: Sequence[int], round_index: int = 0) -> BranchNoise:
    """Noise of ``rows`` in one stream; trained round k > 0 draws its own (round 0 keeps the one-round seeds)."""
    return BranchNoise([derive_seed(seed, stage, stream, r, *((round_index,) if round_index else ())) for r in rows])


class CallCounter:
    """Counts model calls (one CFG step of the batch) and forwards each to ``on_step``."""

    def __init__(self, on_step: OnStep = None):
        self.calls, self.on_step = 0, on_step

    def __call__(self) -> None:
        self.calls += 1
        if self.on_step is not None:
            self.on_step()


@dataclass
class Rollout:
    """A stage's recorded siblings on one process: P local prompts x G siblings, S = split_step transitions."""

    prompts: list[str]  # [P]
    latents: torch.Tensor  # [S, P*G, C, h, w] state before each transition
    next_latents: torch.Tensor  # [S, P*G, C, h, w]
    sigmas: torch.Tensor  # [S]
    next_sigmas: torch.Tensor  # [S]
    log_probs: torch.Tensor  # [S, P*G]
    trainable: torch.Tensor  # [S] bool: the transition is stochastic (varsigma > 0)
    final: torch.Tensor  # [P*G, C, h, w] clean results
    round_scores: list[torch.Tensor]  # one [P] per scored reflective round
    model_calls: int

    @property
    def siblings(self) -> int:
        return self.final.shape[0] // len(self.prompts)


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """One rollout from several of the same stage (same split step): groups in order, model calls summed."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if any(not torch.equal(p.sigmas, first.sigmas) for p in parts):
        raise ValueError("only rollouts of one stage (the same transitions) can be concatenated")
    return Rollout(
        [prompt for p in parts for prompt in p.prompts],
        torch.cat([p.latents for p in parts], dim=1), torch.cat([p.next_latents for p in parts], dim=1),
        first.sigmas, first.next_sigmas, torch.cat([p.log_probs for p in parts], dim=1), first.trainable,
        torch.cat([p.final for p in parts]),
        [torch.cat(scores) for scores in zip(*(p.round_scores for p in parts))], sum(p.model_calls for p in parts),
    )  # fmt: skip


def collect_rollout(
    policy: PolicyModel,
    cond,
    prompts: list[str],
    config: TrainConfig,
    stage: int,
    rows: Sequence[int],
    score: Callable[[torch.Tensor, list[str]], torch.Tensor] | None = None,
    on_step: OnStep = None,
) -> Rollout:
    """Sample stage ``stage`` for ``prompts`` with conditioning ``cond`` [P]; ``rows`` [P] are the groups' global noise
    rows (two groups on one row start from, and branch with, the same noise)."""
    prompt_count = len(prompts)
    if len(rows) != prompt_count:
        raise ValueError(f"rows ({len(rows)}) must give one noise row per prompt ({prompt_count})")
    seed, count = config.seed, CallCounter(on_step)
    with torch.no_grad():
        guided = policy.guided(cond)
        device = policy.device
        noise = row_noise(seed, stage, START, rows).randn_like(torch.empty((prompt_count,) + tuple(policy.latent_shape)))
        x = prior_latent(guided, noise.to(device), policy.sigmas[0])
        sigmas, round_scores = policy.sigmas, []
        rounds = 0 if config.train_every_round else config.rounds(stage)  # trained rounds: the trainer's loop
        if rounds:
            score_fn = (lambda latents: score(latents, prompts)) if config.scores_rounds and score is not None else None
            state = reflect(
                guided, x, sigmas, rounds=rounds, scale=config.reflection_scale, eta=config.reflection_eta,
                inversion_scale=config.inversion_scale, renoise_strength=config.renoise_strength,
                noise=row_noise(seed, stage, REFLECTION, rows) if config.reflection_eta > 0 else None,
                score_fn=score_fn, selection=config.reflection_selection if score_fn else "last",
                temperature=config.reflection_temperature,
                generator=torch.Generator().manual_seed(derive_seed(seed, stage, REFLECTION, rows[0])), on_step=count,
            )  # fmt: skip
            x, sigmas = state.latent, state.sigmas
            round_scores = [r.scores.flatten() for r in state.passes if r.scores is not None]
        rollout = _branched_rollout(policy, guided, x, sigmas, prompts, config, stage, rows, 0, count)
    rollout.round_scores, rollout.model_calls = round_scores, count.calls
    return rollout


def continue_round(
    policy: PolicyModel,
    cond,
    previous: Rollout,
    rewards: torch.Tensor,
    config: TrainConfig,
    stage: int,
    rows: Sequence[int],
    round_index: int,
    on_step: OnStep = None,
) -> Rollout:
    """Trained round ``round_index`` (``train_every_round``): each group of ``previous`` carries its best-rewarded
    sibling (``rewards`` [P*G], this process's) back with the condition-guided forward process (DDIM inversion at
    CFG ``inversion_scale``, ``renoise_strength`` of the schedule) and branches a new recorded rollout from there."""
    count, siblings = CallCounter(on_step), previous.siblings
    best = rewards.view(-1, siblings).argmax(dim=1) + torch.arange(len(previous.prompts)) * siblings
    with torch.no_grad():
        guided = policy.guided(cond)
        back = renoise(guided, previous.final[best.to(previous.final.device)], policy.sigmas,
                       renoise_strength=config.renoise_strength, scale=config.inversion_scale, on_step=count)  # fmt: skip
        rollout = _branched_rollout(policy, guided, back.latent, back.sigmas, previous.prompts, config, stage, rows,
                                    round_index, count)  # fmt: skip
    rollout.model_calls = count.calls
    return rollout


def _branched_rollout(policy, guided, x, sigmas, prompts, config, stage, rows, round_index, count) -> Rollout:
    """The recorded rollout from ``x`` at ``sigmas[0]``: a shared prefix, then ``split_time`` recorded siblings."""
    seed, siblings = config.seed, config.split_time
    branch_at = branch_point(policy.parametrization, sigmas, config.split_step(stage), config.rollout_eta)
    if branch_at is None:
        raise ValueError(
            f"renoise_strength ({config.renoise_strength}) leaves {stochastic_steps(policy.parametrization, sigmas, config.rollout_eta)} "
            f"stochastic steps after re-noising, fewer than split_step {config.split_step(stage)} of stage {stage}; "
            "raise renoise_strength or lower the split steps"
        )
    if branch_at > 0:
        x = sample(guided, x, sigmas[: branch_at + 1], scale=config.rollout_scale, eta=config.rollout_eta,
                   noise=row_noise(seed, stage, PREFIX, rows, round_index), on_step=count).latent  # fmt: skip
    branch_rows = [row * siblings + sibling for row in rows for sibling in range(siblings)]
    out = sample(guided, x.repeat_interleave(siblings, dim=0), sigmas[branch_at:], scale=config.rollout_scale,
                 eta=config.rollout_eta, noise=row_noise(seed, stage, BRANCH, branch_rows, round_index), record=True,
                 on_step=count)  # fmt: skip
    t = out.trajectory
    trainable = transition_std(policy.parametrization, t.sigmas.float(), t.next_sigmas.float(), config.rollout_eta) > 0
    return Rollout(list(prompts), t.latents, t.next_latents, t.sigmas.float(), t.next_sigmas.float(), t.log_probs,
                   trainable, out.latent, [], 0)  # fmt: skip
