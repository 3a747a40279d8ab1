"""Widget values and a reward shared by the in-process node tests (tests/host)."""

from __future__ import annotations

from srrl_core.rewards.base import Reward

STEPS = 6  # the Reflective Sampler's steps unless a test sets its own


class Brightness(Reward):
    name = "brightness"

    def _score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def sampler_args(**override):
    """Every widget of the Reflective Sampler, K = 0 and no reward by default."""
    args = dict(seed=5, steps=STEPS, cfg=3.0, scheduler="normal", rounds=0, branches=1, renoise_strength=1.0,
                inversion_cfg=0.1, selection="last", temperature=1.0, eta=0.0, early_stop=False, stop_at=0.9)
    return args | override
