r"""B²-DiffuRL's sibling selection: which branched trajectories are worth training on.

Each prompt's trajectory forks into G siblings at the branching step. With normalised advantages
:math:`A_{p,1..G}`, a group contributes its best sibling when :math:`\max_g A_{p,g} \ge \tau_+` and its worst
sibling when :math:`\min_g A_{p,g} < \tau_-` (reference :math:`\tau_\pm = \pm 0.5`); every other sibling is dropped.
Only the transitions after the branching point (the last ``split_step`` of the schedule) are trained: before it
the siblings share one prefix and differ in nothing.
"""

from __future__ import annotations

import torch


def select_siblings(advantages: torch.Tensor, positive_threshold: float = 0.5, negative_threshold: float = -0.5) -> torch.Tensor:
    """Bool mask [P, G] of kept siblings for advantages [P, G] (argmax / argmin per group, first on ties)."""
    if advantages.ndim != 2 or advantages.shape[1] < 1:
        raise ValueError(f"advantages must be [prompts, siblings], got shape {tuple(advantages.shape)}")
    keep = torch.zeros_like(advantages, dtype=torch.bool)
    rows = torch.arange(advantages.shape[0])
    best_value, best = advantages.max(dim=1)
    worst_value, worst = advantages.min(dim=1)
    keep[rows, best] |= best_value >= positive_threshold
    keep[rows, worst] |= worst_value < negative_threshold
    return keep
