"""Mirror-image prompts: the same scene with left and right swapped.

A prompt and its mirror image ask for opposite sides, so a policy that draws one side whatever the prompt says
(a side prior) passes at most one of the two. Training draws such counterfactual pairs with the same noise
(``TrainConfig.mirror_prompts``), and the toy benchmark counts a held-out sample as mirror-consistent only
when it passes under both (:func:`srrl_core.toyworld.experiment.mirror_consistent`).
"""

from __future__ import annotations

import re

_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER = {"left": "right", "right": "left"}


def mirror_prompt(prompt: str) -> str:
    """``prompt`` with every whole word "left" and "right" swapped (the case of its first letter kept)."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = _OTHER[word.lower()]
        return other.capitalize() if word[0].isupper() else other

    return _SIDE.sub(swap, prompt)


def has_side(prompt: str) -> bool:
    """Whether ``prompt`` names a side (its mirror image differs from it)."""
    return _SIDE.search(prompt) is not None
