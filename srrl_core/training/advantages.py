r"""Rewards -> advantages: how much better than expected each sample of a stage is.

Three estimators (``TrainConfig.advantage_mode``), each over one stage's rewards :math:`r_i` of prompt :math:`c(i)`:

``per_prompt`` (default; DDPO's per-prompt stat tracker)
    :math:`A_i = (r_i - \mu_{c}) / \max(\sigma_{c}, \sigma_{min})`, with :math:`\mu_c, \sigma_c` the mean and
    population std of prompt :math:`c`'s rewards this stage (plus those of at most ``history`` earlier stages).
    A prompt with fewer than ``min_count`` rewards falls back to the whole batch's statistics, as DDPO does: two
    or three samples give no baseline worth the name.
``group`` (GRPO)
    the same standardisation within each branching group (the siblings that share one prefix).
``win_rate`` (Pref-GRPO)
    each sample's pairwise win rate against the other samples of its prompt,
    :math:`w_i = \big(\#\{j: r_j < r_i\} + \tfrac12\#\{j \ne i: r_j = r_i\}\big) / (n_c - 1)`, then standardised per
    prompt: only the order of the rewards matters, not their scale.

The floor :math:`\sigma_{min}` (``advantage_std_floor``, in reward units) keeps a near-tied set of rewards --
e.g. [0.987, 0.988, 0.997] -- from being blown up to advantages of :math:`\pm 1.4`: below the floor a difference
counts for what it is. ``history`` > 0 mixes earlier stages' rewards (another policy, another curriculum step)
into the baseline; it is off by default.

The estimator's state (the history) saves to and loads from JSON, never pickle:
{"format": "srrl.per_prompt_normalizer", "version": 1, "history": N, "max_prompts": M, "eps": e,
"prompts": {prompt: [[batch rewards], ...] oldest first}}.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from typing import Sequence

import torch

from ..validation import check_choice, check_finite, check_float, check_int

ADVANTAGE_MODES = ("per_prompt", "group", "win_rate")
FORMAT, VERSION = "srrl.per_prompt_normalizer", 1


def standardize(values: torch.Tensor, reference: torch.Tensor, std_floor: float, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / max(std, std_floor) with the mean and population std of ``reference``."""
    return (values - reference.mean()) / reference.std(unbiased=False).clamp(min=max(std_floor, eps))


def win_rates(rewards: torch.Tensor) -> torch.Tensor:
    """Each reward's share of pairwise wins against the others (ties count half); 0.5 for a lone reward."""
    n = rewards.numel()
    if n < 2:
        return torch.full_like(rewards, 0.5)
    diff = rewards[:, None] - rewards[None, :]
    wins = (diff > 0).sum(1).to(rewards.dtype) + 0.5 * ((diff == 0).sum(1) - 1).to(rewards.dtype)
    return wins / (n - 1)


def rows_by_key(keys: Sequence) -> dict:
    """{key: [indices of the rows with that key]}, in first-seen order."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


class AdvantageEstimator:
    """Stage rewards -> advantages with one of :data:`ADVANTAGE_MODES` (see the module docstring)."""

    def __init__(self, mode: str = "per_prompt", *, min_count: int = 16, std_floor: float = 0.0, history: int = 0,
                 max_prompts: int = 10_000, eps: float = 1e-8):  # fmt: skip
        self.mode = check_choice("advantage_mode", mode, ADVANTAGE_MODES)
        self.min_count = check_int("advantage_min_count", min_count, low=1)
        self.std_floor = check_float("advantage_std_floor", std_floor, low=0.0)
        self.history = check_int("reward_history", history, low=0, high=10_000)
        self.max_prompts = check_int("max_prompts", max_prompts, low=1)
        self.eps = check_float("eps", eps, low=0.0, high=1.0)
        self._batches: OrderedDict[str, deque[list[float]]] = OrderedDict()

    def __call__(self, rewards, prompts: Sequence[str] | str, group_size: int = 1) -> torch.Tensor:
        """Advantages [B] (float32) for one stage's rewards [B], rows prompt-major in groups of ``group_size``
        consecutive siblings; records the stage in the history."""
        rewards = torch.as_tensor(rewards, dtype=torch.float64).flatten()
        check_finite("rewards", rewards)
        prompts = [prompts] * rewards.numel() if isinstance(prompts, str) else list(prompts)
        if len(prompts) != rewards.numel():
            raise ValueError(f"prompts must hold one string per reward ({rewards.numel()}), got {len(prompts)}")
        check_int("group_size", group_size, low=1)
        if rewards.numel() % group_size:
            raise ValueError(f"the number of rewards ({rewards.numel()}) must be a multiple of group_size ({group_size})")
        out = torch.zeros_like(rewards)
        if self.mode == "group":
            for start in range(0, rewards.numel(), group_size):
                group = rewards[start : start + group_size]
                out[start : start + group_size] = standardize(group, group, self.std_floor, self.eps)
            return out.float()
        for prompt, indices in rows_by_key(prompts).items():
            values = rewards[indices]
            if self.mode == "win_rate":
                rates = win_rates(values)
                out[indices] = standardize(rates, rates, self.std_floor, self.eps)
                continue
            past = [value for batch in self._batches.get(prompt, ()) for value in batch]
            reference = torch.cat([rewards.new_tensor(past), values])
            if reference.numel() < self.min_count:
                reference = rewards  # too few of this prompt for a baseline: the whole stage's statistics
            out[indices] = standardize(values, reference, self.std_floor, self.eps)
            self._remember(prompt, values.tolist())
        return out.float()

    def _remember(self, prompt: str, values: list[float]) -> None:
        if self.history == 0:
            return
        batches = self._batches.pop(prompt, None) or deque(maxlen=self.history)
        batches.append(values)
        self._batches[prompt] = batches  # re-insert: most recently seen last
        while len(self._batches) > self.max_prompts:
            self._batches.popitem(last=False)

    def remembered(self, prompt: str) -> int:
        """How many earlier rewards of ``prompt`` the history holds."""
        return sum(len(batch) for batch in self._batches.get(prompt, ()))

    def state_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "history": self.history, "max_prompts": self.max_prompts,
                "eps": self.eps, "prompts": {p: [list(b) for b in batches] for p, batches in self._batches.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the history saved by :meth:`state_dict` (the other settings come from the config)."""
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
            raise ValueError(f"state must be a {FORMAT} version {VERSION} dict, got format "
                             f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
        self._batches.clear()
        for prompt, batches in state["prompts"].items():
            if not isinstance(prompt, str) or not isinstance(batches, list):
                raise ValueError(f"state['prompts'] must map prompt strings to lists of reward lists, bad entry {prompt!r}")
            for batch in batches[-self.history:] if self.history else []:
                self._remember(prompt, [check_float(f"state reward for prompt {prompt!r}", v) for v in batch])

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f)

    def load(self, path: str) -> None:
        with open(path, encoding="utf-8") as f:
            self.load_state_dict(json.load(f))


__all__ = ["ADVANTAGE_MODES", "AdvantageEstimator", "rows_by_key", "standardize", "win_rates"]
