"""The main job end to end at a tiny size: summary.json holds the paired result, --seed changes the run, lr 0
changes nothing."""

import json
import math
from pathlib import Path

import pytest
import torch

from srrl_core import demo
from srrl_core.toyworld import scenes as S
from srrl_core.toyworld.experiment import (Evaluation, heldout_set, mcnemar_exact, mirror_consistent, mirrored,
                                           training_split_set)
from srrl_core.toyworld.verifiers import compliance


def run(tmp_path, name, *args):
    out = tmp_path / name
    assert demo.main(["--out", str(out), "--stages", "1", "--eval-prompts", "3", "--threads", "1", *args]) == 0
    return json.loads((out / "summary.json").read_text()), (out / "report.html").read_text()


def test_demo_reports_paired_heldout_compliance_and_the_lr_0_control_changes_nothing(tmp_path):
    threads = torch.get_num_threads()
    try:
        summary, report = run(tmp_path, "lr0", "--learning-rate", "0")
    finally:
        torch.set_num_threads(threads)
    for key in ("seed", "compliance_before", "compliance_after", "n_pairs", "mcnemar_p", "gained", "lost", "probe_curve"):
        assert key in summary, key
    assert summary["n_pairs"] == 3 * 4 and summary["seed"] == 0
    assert summary["compliance_after"] == summary["compliance_before"] and summary["gained"] == summary["lost"] == 0
    assert summary["mcnemar_p"] == 1.0 and summary["noop_stages"] == 1
    assert summary["mirror_consistent_after"] == summary["mirror_consistent_before"] <= summary["compliance_before"]
    assert summary["mirror_gained"] == summary["mirror_lost"] == 0 and "Mirror test" in report
    assert [p["stage"] for p in summary["probe_curve"]] == [-1, 0]
    assert "McNemar" in report and "12 paired samples" in report


def test_the_seed_moves_the_heldout_noise_but_not_the_prompts():
    prompts0, seeds0 = heldout_set(96, 4, noise_seed=0)
    prompts1, seeds1 = heldout_set(96, 4, noise_seed=1)
    assert prompts0 == prompts1 and len(set(prompts0)) == 96
    assert not set(seeds0) & set(seeds1)
    assert heldout_set(96, 4, noise_seed=[0, 1]) == (prompts0, seeds0 + seeds1)  # several blocks pool their seeds
    for bad in ([0, 0], [], -1):
        with pytest.raises(ValueError, match="noise_seed must be"):
            heldout_set(96, 4, noise_seed=bad)
    with pytest.raises(ValueError, match=r"seeds per noise block must be in \[1, 1000\]"):
        heldout_set(96, 1001, noise_seed=[0, 1])  # would overlap the next block


def test_the_training_split_set_is_what_training_draws_and_shares_the_heldout_noise():
    held_out, seeds = heldout_set(96, 4, noise_seed=2)
    seen, seen_seeds = training_split_set(96, 4, noise_seed=2)
    shipped = Path(__file__).parents[2] / "configs" / "prompts" / "toyworld_train.txt"
    training_file = {line.strip() for line in shipped.read_text(encoding="utf-8").splitlines() if not line.startswith("#")}
    assert len(set(seen)) == 96 and set(seen) <= training_file and not set(seen) & set(held_out)
    assert seen_seeds == seeds


def test_mcnemar_exact_matches_the_binomial_tail():
    before = torch.tensor([0] * 30 + [1] * 10, dtype=torch.bool)
    after = torch.tensor([1] * 10 + [0] * 20 + [0] * 2 + [1] * 8, dtype=torch.bool)
    gained, lost, p = mcnemar_exact(before, after)
    assert (gained, lost) == (10, 2)
    assert abs(p - 2 * sum(math.comb(12, i) for i in range(3)) / 2**12) < 1e-12  # 0.0386


def test_the_mirror_test_passes_a_model_that_reads_the_side_and_fails_a_side_prior():
    # Compliant held-out scenes of every family. Mirrored horizontally, a compliant scene is a compliant scene of the
    # mirrored prompt (the heavy block, the lamp and the glass's tilt all change side): a model that reads the side
    # draws that. A side prior draws the same picture whatever the prompt says.
    scenes = S.sample_scenes(24, seed=5, split="heldout", violation_rate=0.0)
    prompts = [scene.prompt for scene in scenes]
    images = S.render_batch(scenes, 32)  # [B, H, W, 3]: flip(2) mirrors left and right

    def judged(pictures, texts):
        return Evaluation(compliance(pictures, texts).bool(), torch.zeros(len(texts)), pictures, [], 0)

    original = judged(images, prompts)
    assert original.compliant.all()
    reader = mirror_consistent(original, judged(images.flip(2), mirrored(prompts)))
    side_prior = mirror_consistent(original, judged(images, mirrored(prompts)))
    assert reader.all() and not side_prior.any()
    with pytest.raises(ValueError, match="must pair up"):
        mirror_consistent(original, judged(images[:3], mirrored(prompts[:3])))
