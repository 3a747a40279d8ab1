"""Programmatic verifiers, combination, ranking and the shared input validation."""

import math

import pytest
import torch

from srrl_core.rewards import WeightedSum, load_reward, rank
from srrl_core.rewards.components import component_areas, label_components
from srrl_core.rewards.verifiers import (BrightnessBand, ColourPresence, HorizonLevel, ObjectCount, Symmetry,
                                         parse_rgb)


def canvas(h=32, w=32, value=0.0):
    return torch.full((h, w, 3), value)


def horizon(angle_degrees=0.0, row=16, h=32, w=48):
    """Sky (bright) above a line through (w/2, row) at the given tilt, ground (dark) below."""
    y, x = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    line = row + math.tan(math.radians(angle_degrees)) * (x - (w - 1) / 2)
    return torch.where((y < line)[..., None], torch.tensor([0.6, 0.8, 1.0]), torch.tensor([0.2, 0.3, 0.1]))


def test_parse_rgb_forms():
    assert parse_rgb("255,0,0") == (1.0, 0.0, 0.0)
    assert parse_rgb("#00ff00") == (0.0, 1.0, 0.0)
    assert parse_rgb("0.5, 0.5, 0.5") == (0.5, 0.5, 0.5)
    assert parse_rgb((0, 0, 1)) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="colour must be"):
        parse_rgb("300,0,0")


def test_colour_presence_is_graded_by_area():
    images = torch.stack([canvas(), canvas(), canvas()])
    images[1, :2, :16] = torch.tensor([1.0, 0.0, 0.0])    # 32 px of 1024 = 3.1 %
    images[2, :8] = torch.tensor([0.95, 0.05, 0.0])       # 25 %
    scores = ColourPresence("255,0,0", tolerance=0.2, min_fraction=0.0625).score(images, "x")
    torch.testing.assert_close(scores, torch.tensor([0.0, 0.5, 1.0]))


def test_brightness_band_soft_edges():
    images = torch.stack([canvas(value=v) for v in (0.5, 0.75, 0.9)])
    torch.testing.assert_close(BrightnessBand(0.3, 0.7, softness=0.1).score(images, "x"), torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(BrightnessBand(0.3, 0.7, softness=0).score(images, "x"), torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="high must be"):
        BrightnessBand(0.7, 0.3)


def test_horizon_level_measures_tilt_and_height():
    images = torch.stack([horizon(0), horizon(8), horizon(20), horizon(0, row=8)])
    verifier = HorizonLevel(max_tilt_degrees=16)
    tilt, height, _ = verifier.measure(images)
    assert tilt[0].abs() < 0.5 and abs(tilt[1].item() - 8) < 1.5 and abs(tilt[2].item() - 20) < 2
    assert abs(height[0].item() - 0.5) < 0.03 and abs(height[3].item() - 0.25) < 0.03
    scores = verifier.score(images, "x")
    assert scores[0] > 0.95 and 0.3 < scores[1] < 0.65 and scores[2] == 0
    placed = HorizonLevel(target_height=0.25, height_tolerance=0.2).score(images[[0, 3]], "x")
    assert placed[1] > 0.9 and placed[0] < 0.1
    assert HorizonLevel().score(canvas()[None], "x").item() == 0  # no edge, no horizon


def test_connected_components_count_blobs_and_ignore_diagonals():
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 0:2, 0:2] = True
    mask[0, 5:8, 5:8] = True
    mask[0, 0, 7] = True
    mask[1, 0, 0] = mask[1, 1, 1] = True                   # diagonal neighbours: two components
    mask[1, 3, :] = True
    mask[1, :, 4] = True                                   # a cross: one component
    areas = component_areas(label_components(mask))
    assert sorted(areas[0].tolist()) == [1, 4, 9]
    assert sorted(areas[1].tolist()) == [1, 1, 15]


def test_connected_components_on_a_spiral():
    mask = torch.zeros(1, 15, 15, dtype=torch.bool)
    mask[0, ::2] = True                                   # rows 0, 2, ..., 14
    for r in range(0, 14, 2):                              # join them alternately on the right and left
        mask[0, r + 1, 14 if (r // 2) % 2 == 0 else 0] = True
    assert [a.tolist() for a in component_areas(label_components(mask))] == [[8 * 15 + 7]]


def test_object_count_scores_exact_count_highest():
    images = torch.stack([canvas(), canvas(), canvas()])
    red = torch.tensor([1.0, 0.0, 0.0])
    for i, count in enumerate((1, 2, 4)):
        for k in range(count):
            images[i, 2 + 7 * k:6 + 7 * k, 2:6] = red
    images[:, 30, 30] = red                                # a one-pixel speck below min_area
    verifier = ObjectCount("#ff0000", count=2, min_area=4)
    assert verifier.counts(images).tolist() == [1, 2, 4]
    torch.testing.assert_close(verifier.score(images, "x"), torch.tensor([0.5, 1.0, 1 / 3]))


def test_symmetry():
    symmetric = canvas()
    symmetric[:, :8] = symmetric[:, -8:] = 1.0
    lopsided = canvas()
    lopsided[:, :16] = 1.0
    scores = Symmetry().score(torch.stack([symmetric, lopsided]), "x")
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.0]))
    assert Symmetry("horizontal").score(lopsided[None], "x").item() == 1.0


def test_weighted_sum_and_registry_config():
    images = torch.stack([canvas(value=0.5), canvas(value=0.95)])
    combined = load_reward("weighted_sum", terms=[
        {"backend": "brightness_band", "low": 0.4, "high": 0.6, "weight": 2.0},
        {"backend": "symmetry", "weight": -1.0}])
    torch.testing.assert_close(combined.score(images, "x"), torch.tensor([1.0, -1.0]))
    assert set(combined.components(images, "x")) == {"0:brightness_band", "1:symmetry"}
    with pytest.raises(ValueError, match="terms must hold"):
        WeightedSum([])


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="backend must be one of"):
        load_reward("nope")
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['colour_tolerance'\]"):
        load_reward("colour_presence", colour="255,0,0", colour_tolerance=0.1)


def test_rank_orders_best_first_and_reports():
    images = torch.stack([canvas(value=v) for v in (0.2, 0.9, 0.5)])
    ranking = rank(BrightnessBand(0.8, 1.0, softness=1.0), images, ["dark", "bright", "mid"])
    assert ranking.order.tolist() == [1, 2, 0]
    report = ranking.report()
    assert report.splitlines()[1].startswith("#1  image 1  score 1.0000  bright")


@pytest.mark.parametrize("images, message", [
    (torch.rand(2, 8, 8), r"\[B, H, W, 3\]"),
    (torch.rand(1, 8, 8, 4), r"\[B, H, W, 3\]"),
    (torch.rand(1, 8, 8, 3) * 255, r"values in \[0, 1\]"),
    (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), "floating point"),
    (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
])
def test_bad_images_are_rejected(images, message):
    with pytest.raises(ValueError, match=message):
        Symmetry().score(images, "x")


def test_bad_prompts_are_rejected():
    with pytest.raises(ValueError, match=r"prompts\[0\] must be a non-empty string"):
        Symmetry().score(torch.rand(1, 8, 8, 3), "  ")
    with pytest.raises(ValueError, match="prompts must hold 1 or 2"):
        Symmetry().score(torch.rand(2, 8, 8, 3), ["a", "b", "c"])
