"""Advantages (per prompt with batch fallback and std floor, per group, win rate), the sibling gap rule, history
windows and JSON state."""

import json

import pytest
import torch

from srrl_core.training import select_siblings
from srrl_core.training.advantages import AdvantageEstimator, win_rates
from srrl_core.training.selection import informative_prompts, reward_spread


def test_per_prompt_statistics_when_the_prompt_has_enough_samples():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 30.0, 20.0, 40.0])
    prompts = ["a"] * 4 + ["b"] * 4
    advantages = AdvantageEstimator(min_count=4)(rewards, prompts)
    for group in (slice(0, 4), slice(4, 8)):
        assert advantages[group].mean().abs() < 1e-6
        assert advantages[group].std(unbiased=False) == pytest.approx(1.0, abs=1e-6)


def test_a_prompt_with_too_few_samples_falls_back_to_the_batch_statistics():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 30.0])
    prompts = ["a"] * 4 + ["b"] * 2
    advantages = AdvantageEstimator(min_count=3)(rewards, prompts)
    batch = rewards.double()
    expected_b = (batch[4:] - batch.mean()) / batch.std(unbiased=False)
    torch.testing.assert_close(advantages[4:], expected_b.float())
    assert advantages[:4].mean().abs() < 1e-6  # "a" has 4 >= 3 samples: its own baseline


def test_the_std_floor_keeps_near_ties_small():
    rewards = torch.tensor([0.987, 0.988, 0.997, 0.990])
    unfloored = AdvantageEstimator(min_count=1)(rewards, "p")
    floored = AdvantageEstimator(min_count=1, std_floor=0.05)(rewards, "p")
    assert unfloored.abs().max() > 1.4  # a 0.01 spread becomes "much better / much worse"
    torch.testing.assert_close(floored, ((rewards.double() - rewards.double().mean()) / 0.05).float())
    assert floored.abs().max() < 0.2


def test_group_mode_standardises_each_branching_group():
    rewards = torch.tensor([1.0, 3.0, 100.0, 300.0])
    advantages = AdvantageEstimator("group")(rewards, ["p"] * 4, group_size=2)
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 1.0, -1.0, 1.0]))


def test_win_rate_mode_uses_only_the_order():
    assert win_rates(torch.tensor([0.1, 0.5, 0.5, 0.9])).tolist() == [0.0, 0.5, 0.5, 1.0]
    a = AdvantageEstimator("win_rate")(torch.tensor([0.1, 0.2, 0.3, 0.4]), "p")
    b = AdvantageEstimator("win_rate")(torch.tensor([-50.0, 0.0, 0.001, 1e6]), "p")
    torch.testing.assert_close(a, b)


def group_spread(rewards: torch.Tensor) -> torch.Tensor:
    """Each group's reward range, for rewards [P, G] (the ``group`` scope)."""
    groups, siblings = rewards.shape
    return reward_spread(rewards.flatten(), [row // siblings for row in range(groups * siblings)]).view(groups, siblings)[:, 0]


def test_the_gap_rule_drops_groups_of_near_identical_siblings():
    advantages = torch.tensor([[1.4, -1.4, 0.0], [1.0, -1.0, 0.0]])
    rewards = torch.tensor([[0.988, 0.987, 0.9875], [0.9, 0.2, 0.5]])
    keep = select_siblings(advantages, 0.5, -0.5, group_spread(rewards), min_gap=0.05)
    assert keep.tolist() == [[False, False, False], [True, True, False]]
    assert select_siblings(advantages, 0.5, -0.5).sum() == 4  # without a spread: the reference's rule
    with pytest.raises(ValueError, match="spread must hold one value per group"):
        select_siblings(advantages, 0.5, -0.5, group_spread(rewards)[:1], 0.05)


def test_keep_all_selection_trains_every_sibling_of_groups_that_differ():
    advantages = torch.tensor([[0.1, -0.1, 0.0], [1.0, -1.0, 0.0]])
    rewards = torch.tensor([[0.5, 0.49, 0.495], [0.9, 0.2, 0.5]])
    keep = select_siblings(advantages, 0.5, -0.5, group_spread(rewards), min_gap=0.05, mode="all")
    assert keep.tolist() == [[False, False, False], [True, True, True]]
    with pytest.raises(ValueError, match="sibling_selection must be one of"):
        select_siblings(advantages, mode="some")


def test_prompt_scope_keeps_tied_groups_whose_prompt_differs():
    # Prompt a: one group of siblings all at 1, one all at 0 (each group tied, the prompt split); prompt b: all tied.
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.7, 0.71, 0.7, 0.72])
    prompts = ["a"] * 4 + ["b"] * 4
    advantages = AdvantageEstimator(min_count=4, std_floor=0.05)(rewards, prompts, group_size=2).view(4, 2)
    torch.testing.assert_close(advantages[:2], torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    by_group = select_siblings(advantages, spread=group_spread(rewards.view(4, 2)), min_gap=0.05, mode="all")
    assert not by_group.any()  # every group's siblings tie: the group scope trains nothing
    by_prompt = reward_spread(rewards, prompts).view(4, 2)[:, 0]
    torch.testing.assert_close(by_prompt, torch.tensor([1.0, 1.0, 0.02, 0.02]))
    keep = select_siblings(advantages, spread=by_prompt, min_gap=0.05, mode="all")
    assert keep.tolist() == [[True, True], [True, True], [False, False], [False, False]]
    with pytest.raises(ValueError, match="keys must hold one entry per reward"):
        reward_spread(rewards, prompts[:3])


def test_informative_prompts_are_those_whose_samples_differ_by_the_gap():
    # a: solved everywhere; b: split; c: differs by less than the gap; d: failed everywhere.
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.5, 0.52, 0.0, 0.0])
    prompts = ["a", "a", "b", "b", "c", "c", "d", "d"]
    spread = reward_spread(rewards, prompts)
    assert informative_prompts(spread, 2, min_gap=0.05) == 1
    assert informative_prompts(spread, 2, min_gap=0.0) == 2  # a tie is never informative, whatever the gap
    assert informative_prompts(torch.cat([spread, spread]), 2, min_gap=0.05) == 2  # a prompt drawn twice counts twice
    with pytest.raises(ValueError, match="do not split into prompts of rows_per_prompt = 3"):
        informative_prompts(spread, 3, 0.05)


def test_history_window_holds_this_batch_plus_the_last_n_batches():
    estimator = AdvantageEstimator(history=2, min_count=1)
    batches = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0]), torch.tensor([8.0, 13.0]), torch.tensor([0.0, 4.0])]
    for batch in batches[:3]:
        estimator(batch, "p")
    advantages = estimator(batches[3], ["p", "p"])
    window = torch.cat(batches[1:]).double()  # the oldest batch has left the window
    torch.testing.assert_close(advantages, ((batches[3].double() - window.mean()) / window.std(unbiased=False)).float())
    assert estimator.remembered("p") == 4


def test_history_is_off_by_default_and_bounded_in_prompts():
    estimator = AdvantageEstimator(min_count=1)
    estimator(torch.tensor([100.0, 200.0]), ["x", "x"])
    assert estimator.remembered("x") == 0
    bounded = AdvantageEstimator(history=3, max_prompts=2, min_count=1)
    for name in "abc":
        bounded(torch.ones(2), name)
    assert bounded.remembered("a") == 0 and list(bounded.state_dict()["prompts"]) == ["b", "c"]


def test_state_round_trips_through_json(tmp_path):
    estimator = AdvantageEstimator(history=4, min_count=1)
    for step in range(6):
        estimator(torch.tensor([step, step * 2.0, 1.0]), ["a", "b", "a"])
    path = tmp_path / "advantages.json"
    estimator.save(str(path))
    assert json.loads(path.read_text())["format"] == "srrl.per_prompt_normalizer"
    restored = AdvantageEstimator(history=4, min_count=1)
    restored.load(str(path))
    assert restored.state_dict() == estimator.state_dict()
    batch = torch.tensor([3.0, 9.0, 0.5])
    torch.testing.assert_close(restored(batch, ["a", "b", "a"]), estimator(batch, ["a", "b", "a"]))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="advantage_mode must be one of"):
        AdvantageEstimator("ranked")
    with pytest.raises(ValueError, match="reward_history must be"):
        AdvantageEstimator(history=-1)
    with pytest.raises(ValueError, match="one string per reward"):
        AdvantageEstimator()(torch.ones(3), ["a", "b"])
    with pytest.raises(ValueError, match="rewards contains NaN"):
        AdvantageEstimator()(torch.tensor([1.0, float("nan")]), "a")
    with pytest.raises(ValueError, match="multiple of group_size"):
        AdvantageEstimator("group")(torch.ones(3), "a", group_size=2)
    with pytest.raises(ValueError, match="srrl.per_prompt_normalizer version 1"):
        AdvantageEstimator().load_state_dict({"format": "pickle"})
