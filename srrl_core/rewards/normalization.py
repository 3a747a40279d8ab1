"""Reward -> advantage normalisation per prompt.

Per-prompt with history (SRRL/DDPO reference): for each prompt c in the batch,

    A_i = (r_i - mean_c) / (std_c + eps),   mean_c, std_c over the batch's rewards for c together with the
                                            raw rewards of the last ``history`` batches that contained c

(population std, eps = 1e-8); afterwards the batch's rewards for c join c's history. History is bounded:
at most ``history`` batches per prompt and ``max_prompts`` prompts (the least recently seen is dropped).
With ``history = 0`` this is group normalisation (GRPO-style: statistics over the current batch only,
per prompt), also available statelessly as ``group_normalize``. A prompt seen once with no history gets
advantage 0 (r - mean = 0).

State saves to / loads from JSON (never pickle): {"format": "srrl.per_prompt_normalizer", "version": 1,
"history": N, "max_prompts": M, "eps": e, "prompts": {prompt: [[batch rewards], ...] oldest first}}, with
prompts in least-recently-seen-first order.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict, deque
from typing import Sequence

import torch

from ..validation import check_finite, check_float, check_int

FORMAT, VERSION = "srrl.per_prompt_normalizer", 1


def _check(rewards, prompts) -> tuple[torch.Tensor, list[str]]:
    rewards = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    check_finite("rewards", rewards)
    prompts = [prompts] * rewards.numel() if isinstance(prompts, str) else list(prompts)
    if len(prompts) != rewards.numel():
        raise ValueError(f"prompts must hold one string per reward ({rewards.numel()}), got {len(prompts)}")
    return rewards, prompts


def _groups(prompts: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    return groups


def group_normalize(rewards, prompts: Sequence[str] | str, eps: float = 1e-8) -> torch.Tensor:
    """(r_i - mean_g) / (std_g + eps) within each group g of equal prompts in this batch: [B] float32."""
    rewards, prompts = _check(rewards, prompts)
    out = torch.zeros_like(rewards)
    for indices in _groups(prompts).values():
        values = rewards[indices]
        out[indices] = (values - values.mean()) / (values.std(unbiased=False) + eps)
    return out.float()


class PerPromptNormalizer:
    """Stateful per-prompt normaliser with a bounded history window (see the module docstring)."""

    def __init__(self, history: int = 8, max_prompts: int = 10_000, eps: float = 1e-8):
        self.history = check_int("history", history, low=0, high=10_000)
        self.max_prompts = check_int("max_prompts", max_prompts, low=1)
        self.eps = check_float("eps", eps, low=0.0, high=1.0)
        self._batches: OrderedDict[str, deque[list[float]]] = OrderedDict()

    def __call__(self, rewards, prompts: Sequence[str] | str) -> torch.Tensor:
        """Advantages [B] (float32) for this batch's rewards; then records the batch in the history."""
        rewards, prompts = _check(rewards, prompts)
        out = torch.zeros_like(rewards)
        for prompt, indices in _groups(prompts).items():
            past = [value for batch in self._batches.get(prompt, ()) for value in batch]
            values = torch.cat([rewards.new_tensor(past), rewards[indices]])
            out[indices] = (rewards[indices] - values.mean()) / (values.std(unbiased=False) + self.eps)
            self._remember(prompt, rewards[indices].tolist())
        return out.float()

    def _remember(self, prompt: str, values: list[float]) -> None:
        if self.history == 0:
            return
        batches = self._batches.pop(prompt, None) or deque(maxlen=self.history)
        batches.append(values)
        self._batches[prompt] = batches  # re-insert: most recently seen last
        while len(self._batches) > self.max_prompts:
            self._batches.popitem(last=False)

    def stats(self, prompt: str) -> tuple[int, float, float]:
        """(count, mean, std) of the remembered rewards for ``prompt`` ((0, nan, nan) when none)."""
        values = [v for batch in self._batches.get(prompt, ()) for v in batch]
        if not values:
            return 0, math.nan, math.nan
        t = torch.tensor(values, dtype=torch.float64)
        return len(values), float(t.mean()), float(t.std(unbiased=False))

    def state_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "history": self.history, "max_prompts": self.max_prompts,
                "eps": self.eps, "prompts": {p: [list(b) for b in batches] for p, batches in self._batches.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PerPromptNormalizer":
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
            raise ValueError(f"state must be a {FORMAT} version {VERSION} dict, got format "
                             f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
        normalizer = cls(state["history"], state["max_prompts"], state["eps"])
        for prompt, batches in state["prompts"].items():
            if not isinstance(prompt, str) or not isinstance(batches, list):
                raise ValueError(f"state['prompts'] must map prompt strings to lists of reward lists, bad entry {prompt!r}")
            for batch in batches[-normalizer.history:] if normalizer.history else []:
                values = [check_float(f"state reward for prompt {prompt!r}", v) for v in batch]
                normalizer._remember(prompt, values)
        return normalizer

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f)

    @classmethod
    def load(cls, path: str) -> "PerPromptNormalizer":
        with open(path, encoding="utf-8") as f:
            return cls.from_state_dict(json.load(f))
