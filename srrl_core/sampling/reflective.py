"""Multi-round reflective sampling: SRRL's chain of thought, one whole trajectory per thought.

Round k denoises G branches per prompt to clean candidates, optionally scores them, chooses what each branch
carries into round k + 1, and re-noises it with the condition-guided forward process. After K reflective rounds a
final pass denoises once more; K = 0 is a plain sampler.

Selection (what each of a prompt's G branch slots carries forward):

* ``"last"``: every branch carries its own result — the reference code, no reward between rounds.
* ``"best"``: every slot carries the best candidate seen so far (elitist; needs a reward).
* ``"softmax"``: slots draw candidates of the current round with probability softmax(score / temperature).

Identical carried latents diverge again only through stochastic denoising (``eta`` > 0). With a reward, the
result per prompt is the best candidate of all passes; without one, every branch of the last pass. A run of K
rounds makes K + 1 denoising passes (pass k is round k's, pass K the final one); early stop ends it after the pass
that reached ``stop_at``, skipping that round's re-noising and the final pass.
Latent rows are prompt-major: row ``p * G + g`` is branch g of prompt p.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..validation import check_choice, check_finite, check_float, check_int, check_sigmas
from .guidance import GuidedDenoiser
from .noise import BranchNoise
from .renoise import renoise, renoise_start
from .samplers import OnStep, Trajectory, sample

SELECTIONS = ("last", "best", "softmax")
ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # clean latents [P*G, ...] -> scores [P*G]


@dataclass
class PassRecord:
    """One denoising pass: its clean candidates, their scores, and what each slot carried into the next round."""

    latents: torch.Tensor  # [P, G, ...] clean candidates of this pass
    scores: torch.Tensor | None  # [P, G]
    carried: torch.Tensor | None = None  # [P, G, 2]: (pass, branch) each slot carried on; None if not re-noised


@dataclass
class Reflection:
    """The state after the reflective rounds: where the final pass starts."""

    latent: torch.Tensor  # [P*G, ...] at sigmas[0]
    sigmas: torch.Tensor  # remaining schedule
    passes: list[PassRecord] = field(default_factory=list)  # one per denoising pass so far
    best_latent: torch.Tensor | None = None  # [P, ...]
    best_score: torch.Tensor | None = None  # [P]
    best_at: torch.Tensor | None = None  # [P, 2] (pass, branch)
    stopped_early: bool = False


@dataclass
class ReflectionResult:
    latent: torch.Tensor  # [P, ...] best per prompt with a reward; else [P*G, ...] the last pass's branches
    passes: list[PassRecord]  # every denoising pass, the final one included
    best_score: torch.Tensor | None  # [P]
    best_at: torch.Tensor | None  # [P, 2] (pass, branch) of the chosen candidate
    stopped_early: bool
    trajectory: Trajectory | None  # the final pass, when recorded
    model_calls: int

    @property
    def rounds(self) -> int:
        """Reflective rounds K actually run: the passes after the first, each one re-noising plus denoising. An early
        stop skips the stopping round's re-noising, so its pass counts as the last, not as a round."""
        return len(self.passes) - 1

    @property
    def all_latents(self) -> torch.Tensor:
        """Every pass's clean candidates, pass-major: [passes * P * G, ...]."""
        return torch.cat([r.latents.flatten(0, 1) for r in self.passes])


def planned_model_calls(steps: int, rounds: int, renoise_strength: float) -> int:
    """Model calls of a reflective run without early stop: a full pass plus K x (inversion + partial pass)."""
    partial = steps - renoise_start(steps, renoise_strength)
    return steps + rounds * 2 * partial


def reflect(
    guided: GuidedDenoiser,
    latent: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    rounds: int,
    branches: int = 1,
    scale: float,
    eta: float = 0.0,
    inversion_scale: float = 0.1,
    renoise_strength: float = 1.0,
    noise: BranchNoise | None = None,
    score_fn: ScoreFn | None = None,
    selection: str = "last",
    temperature: float = 1.0,
    stop_at: float | None = None,
    generator: torch.Generator | None = None,
    on_step: OnStep = None,
) -> Reflection:
    """Run ``rounds`` reflective rounds (denoise, score, select, re-noise) from ``latent`` at ``sigmas[0]``."""
    prompts = _check_inputs(latent, sigmas, rounds, branches, renoise_strength, selection, temperature, score_fn, stop_at)
    state = Reflection(latent, sigmas)
    for k in range(rounds):
        x0 = _denoise(guided, state.latent, state.sigmas, scale, eta, noise, on_step)
        record = _score_pass(state, k, x0, score_fn, prompts, branches)
        if stop_at is not None and bool((state.best_score >= stop_at).all()):
            state.stopped_early = True
            return state
        carried_at = _select(state, record, k, selection, temperature, generator)
        record.carried = carried_at
        carried = torch.stack([state.passes[r].latents[p, b] for p, slots in enumerate(carried_at.tolist()) for r, b in slots])
        renoised = renoise(guided, carried, sigmas, renoise_strength=renoise_strength, scale=inversion_scale, on_step=on_step)
        state.latent, state.sigmas = renoised.latent, renoised.sigmas
    return state


def reflective_sample(
    guided: GuidedDenoiser,
    latent: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    rounds: int,
    branches: int = 1,
    scale: float,
    eta: float = 0.0,
    inversion_scale: float = 0.1,
    renoise_strength: float = 1.0,
    noise: BranchNoise | None = None,
    score_fn: ScoreFn | None = None,
    selection: str = "last",
    temperature: float = 1.0,
    stop_at: float | None = None,
    generator: torch.Generator | None = None,
    final_scale: float | None = None,
    final_eta: float | None = None,
    record: bool = False,
    on_step: OnStep = None,
) -> ReflectionResult:
    """K reflective rounds, then a final pass (optionally with its own CFG scale / eta, recorded for training)."""
    calls = [0]

    def count() -> None:
        calls[0] += 1
        if on_step is not None:
            on_step()

    state = reflect(
        guided, latent, sigmas, rounds=rounds, branches=branches, scale=scale, eta=eta,
        inversion_scale=inversion_scale, renoise_strength=renoise_strength, noise=noise, score_fn=score_fn, selection=selection,
        temperature=temperature, stop_at=stop_at, generator=generator, on_step=count,
    )  # fmt: skip
    trajectory = None
    if not state.stopped_early:
        final_eta = eta if final_eta is None else final_eta
        final_scale = scale if final_scale is None else final_scale
        if state.sigmas.numel() < 2:
            x0 = state.latent
        else:
            out = sample(guided, state.latent, state.sigmas, scale=final_scale, eta=final_eta, noise=noise, record=record, on_step=count)
            x0, trajectory = out.latent, out.trajectory
        _score_pass(state, rounds, x0, score_fn, latent.shape[0] // branches, branches)
    final = state.best_latent if score_fn is not None else state.passes[-1].latents.flatten(0, 1)
    return ReflectionResult(final, state.passes, state.best_score, state.best_at, state.stopped_early, trajectory, calls[0])


def _check_inputs(latent, sigmas, rounds, branches, renoise_strength, selection, temperature, score_fn, stop_at) -> int:
    check_int("rounds", rounds, 0)
    check_int("branches", branches, 1)
    check_float("renoise_strength", renoise_strength, 0.0, 1.0)
    check_float("temperature", temperature, 1e-6)
    check_choice("selection", selection, SELECTIONS)
    check_sigmas("sigmas", sigmas)
    check_finite("latent", latent)
    if latent.shape[0] % branches:
        raise ValueError(f"latent batch ({latent.shape[0]}) must be a multiple of branches ({branches})")
    if score_fn is None and selection != "last":
        raise ValueError(f"selection {selection!r} needs a reward (score_fn); use 'last' for reflection without reward")
    if score_fn is None and stop_at is not None:
        raise ValueError("stop_at needs a reward (score_fn) to compare against")
    return latent.shape[0] // branches


def _denoise(guided, latent, sigmas, scale, eta, noise, on_step) -> torch.Tensor:
    if sigmas.numel() < 2:  # renoise_strength 0: nothing was re-noised, nothing to denoise
        return latent
    return sample(guided, latent, sigmas, scale=scale, eta=eta, noise=noise, on_step=on_step).latent


def _score_pass(state: Reflection, k: int, x0: torch.Tensor, score_fn, prompts: int, branches: int) -> PassRecord:
    latents = x0.reshape((prompts, branches) + x0.shape[1:])
    scores = None
    if score_fn is not None:
        scores = torch.as_tensor(score_fn(x0), dtype=torch.float32).reshape(prompts, branches).cpu()
        if not torch.isfinite(scores).all():
            raise ValueError(f"the reward returned non-finite scores in round {k}: {scores.tolist()}")
        round_best, branch = scores.max(dim=1)
        if state.best_score is None:
            improved = torch.ones(prompts, dtype=torch.bool)
            state.best_score, state.best_latent = round_best.clone(), latents[:, 0].clone()
            state.best_at = torch.zeros(prompts, 2, dtype=torch.long)
        else:
            improved = round_best > state.best_score
        for p in improved.nonzero().flatten().tolist():
            state.best_score[p] = round_best[p]
            state.best_latent[p] = latents[p, branch[p]]
            state.best_at[p] = torch.tensor([k, branch[p]])
    record = PassRecord(latents, scores)
    state.passes.append(record)
    return record


def _select(state: Reflection, record: PassRecord, k: int, selection: str, temperature: float, generator) -> torch.Tensor:
    """[P, G, 2] (pass, branch) that each slot carries into the next round."""
    prompts, branches = record.latents.shape[:2]
    slots = torch.arange(branches).expand(prompts, branches)
    if selection == "best":
        return state.best_at[:, None, :].expand(prompts, branches, 2).clone()
    if selection == "softmax":
        probs = torch.softmax(record.scores / temperature, dim=1)
        slots = torch.multinomial(probs, branches, replacement=True, generator=generator)
    return torch.stack([torch.full_like(slots, k), slots], dim=-1)
