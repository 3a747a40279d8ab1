"""Per-prompt normalisation with a history window, group normalisation, bounded history, JSON state."""

import json

import pytest
import torch

from srrl_core.rewards import PerPromptNormalizer, group_normalize


def test_group_normalize_is_zero_mean_unit_std_per_prompt():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 30.0, 7.0])
    prompts = ["a", "a", "a", "b", "b", "single"]
    advantages = group_normalize(rewards, prompts)
    for group in ([0, 1, 2], [3, 4]):
        assert advantages[group].mean().abs() < 1e-6
        assert advantages[group].std(unbiased=False) == pytest.approx(1.0, abs=1e-6)
    assert advantages[5] == 0  # a lone sample has nothing to be better than


def test_window_statistics_are_this_batch_plus_last_n_batches():
    normalizer = PerPromptNormalizer(history=2)
    batches = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0]), torch.tensor([8.0, 13.0]), torch.tensor([0.0, 4.0])]
    for batch in batches[:3]:
        normalizer(batch, "p")
    advantages = normalizer(batches[3], ["p", "p"])
    window = torch.cat(batches[1:]).double()       # the oldest batch has left the window
    expected = (batches[3].double() - window.mean()) / (window.std(unbiased=False) + 1e-8)
    torch.testing.assert_close(advantages, expected.float())
    assert normalizer.stats("p")[0] == 4           # history keeps 2 batches of 2


def test_advantages_are_standardised_over_a_stationary_stream():
    g = torch.Generator().manual_seed(0)
    normalizer = PerPromptNormalizer(history=8)
    out = {"a": [], "b": []}
    for _ in range(60):
        prompts = ["a"] * 4 + ["b"] * 4
        rewards = torch.cat([5 + 2 * torch.randn(4, generator=g), -1 + 0.1 * torch.randn(4, generator=g)])
        advantages = normalizer(rewards, prompts)
        out["a"].append(advantages[:4])
        out["b"].append(advantages[4:])
    for values in out.values():
        values = torch.cat(values[8:])               # once the window is full
        assert values.mean().abs() < 0.15 and values.std() == pytest.approx(1.0, abs=0.15)


def test_history_and_prompt_count_are_bounded():
    normalizer = PerPromptNormalizer(history=3, max_prompts=2)
    for step in range(10):
        normalizer(torch.arange(5.0) + step, "a")
    assert normalizer.stats("a")[0] == 15
    normalizer(torch.ones(2), "b")
    normalizer(torch.ones(2), "c")                 # evicts "a", the least recently seen
    assert normalizer.stats("a")[0] == 0 and normalizer.stats("b")[0] == 2
    assert list(normalizer.state_dict()["prompts"]) == ["b", "c"]


def test_history_zero_is_group_normalisation():
    rewards, prompts = torch.tensor([1.0, 4.0, 2.0, 2.0]), ["x", "x", "y", "y"]
    normalizer = PerPromptNormalizer(history=0)
    normalizer(torch.tensor([100.0, 200.0]), ["x", "x"])
    torch.testing.assert_close(normalizer(rewards, prompts), group_normalize(rewards, prompts))


def test_state_round_trips_through_json(tmp_path):
    normalizer = PerPromptNormalizer(history=4, max_prompts=10)
    for step in range(6):
        normalizer(torch.tensor([step, step * 2.0, 1.0]), ["a", "b", "a"])
    path = tmp_path / "normalizer.json"
    normalizer.save(str(path))
    state = json.loads(path.read_text())
    assert state["format"] == "srrl.per_prompt_normalizer" and len(state["prompts"]["a"]) == 4
    restored = PerPromptNormalizer.load(str(path))
    assert restored.state_dict() == normalizer.state_dict()
    batch = torch.tensor([3.0, 9.0, 0.5])
    torch.testing.assert_close(restored(batch, ["a", "b", "a"]), normalizer(batch, ["a", "b", "a"]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="history must be"):
        PerPromptNormalizer(history=-1)
    with pytest.raises(ValueError, match="one string per reward"):
        PerPromptNormalizer()(torch.ones(3), ["a", "b"])
    with pytest.raises(ValueError, match="rewards contains NaN"):
        group_normalize(torch.tensor([1.0, float("nan")]), "a")
    with pytest.raises(ValueError, match="srrl.per_prompt_normalizer version 1"):
        PerPromptNormalizer.from_state_dict({"format": "pickle"})
