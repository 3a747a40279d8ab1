r"""Sibling selection: which branched trajectories are worth training on.

Each group's trajectory forks into G siblings at the branching step. With advantages :math:`A_{p,1..G}` and raw
rewards :math:`r_{p,1..G}`:

``best_worst`` (B²-DiffuRL, the reference)
    a group contributes its best sibling when :math:`\max_g A_{p,g} \ge \tau_+` and its worst sibling when
    :math:`\min_g A_{p,g} < \tau_-` (reference :math:`\tau_\pm = \pm 0.5`); every other sibling is dropped.
``all`` (DDPO / GRPO)
    every sibling trains with its advantage.

Either way a group keeps nothing when the rewards it is compared with differ by less than ``min_gap``: the best of
near-identical samples is not better, and training on it pushes the policy along noise. Which rewards
(``TrainConfig.reward_gap_scope``, :func:`reward_spread`): ``group``, the group's own siblings
(:math:`\max_g r_{p,g} - \min_g r_{p,g}`, the GRPO view); or ``prompt``, every sample of the group's prompt this
stage -- the set a per-prompt baseline compares against, so a group whose siblings tie at 1 still trains when its
prompt's other groups scored 0. Only the transitions after the branching point are trained: before it the siblings
share one prefix.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .advantages import rows_by_key

SIBLING_SELECTIONS = ("best_worst", "all")
GAP_SCOPES = ("group", "prompt")


def reward_spread(rewards: torch.Tensor, keys: Sequence) -> torch.Tensor:
    """Each reward's range (max - min) over the rewards [N] that share its key (its group, or its prompt)."""
    if len(keys) != rewards.numel():
        raise ValueError(f"keys must hold one entry per reward ({rewards.numel()}), got {len(keys)}")
    spread = torch.empty_like(rewards)
    for indices in rows_by_key(keys).values():
        values = rewards[indices]
        spread[indices] = values.max() - values.min()
    return spread


def informative_prompts(spread: torch.Tensor, rows_per_prompt: int, min_gap: float) -> int:
    """How many drawn prompts (consecutive blocks of ``rows_per_prompt`` rewards) have a row whose reward spread [N]
    (:func:`reward_spread`) is positive and at least ``min_gap``: the prompts a stage can learn from. One whose
    samples all solve, or all fail, has nothing to teach."""
    if spread.numel() % rows_per_prompt:
        raise ValueError(f"{spread.numel()} rewards do not split into prompts of rows_per_prompt = {rows_per_prompt}")
    passing = (spread > 0) & (spread >= min_gap)
    return int(passing.view(-1, rows_per_prompt).any(dim=1).sum())


def select_siblings(advantages: torch.Tensor, positive_threshold: float = 0.5, negative_threshold: float = -0.5,
                    spread: torch.Tensor | None = None, min_gap: float = 0.0, mode: str = "best_worst") -> torch.Tensor:  # fmt: skip
    """Bool mask [P, G] of kept siblings for advantages [P, G] (``best_worst``: argmax / argmin per group, first on
    ties; ``all``: every sibling); with ``spread`` [P] (each group's reward range, :func:`reward_spread`), groups
    whose spread is below ``min_gap`` keep nothing."""
    if advantages.ndim != 2 or advantages.shape[1] < 1:
        raise ValueError(f"advantages must be [groups, siblings], got shape {tuple(advantages.shape)}")
    if mode not in SIBLING_SELECTIONS:
        raise ValueError(f"sibling_selection must be one of {list(SIBLING_SELECTIONS)}, got {mode!r}")
    if mode == "all":
        keep = torch.ones_like(advantages, dtype=torch.bool)
    else:
        keep = torch.zeros_like(advantages, dtype=torch.bool)
        rows = torch.arange(advantages.shape[0])
        best_value, best = advantages.max(dim=1)
        worst_value, worst = advantages.min(dim=1)
        keep[rows, best] |= best_value >= positive_threshold
        keep[rows, worst] |= worst_value < negative_threshold
    if spread is not None:
        if spread.shape != advantages.shape[:1]:
            raise ValueError(f"spread must hold one value per group ({advantages.shape[0]}), got shape {tuple(spread.shape)}")
        keep &= (spread >= min_gap).to(keep.device)[:, None]
    return keep
