"""The GPU benchmarks' code paths at toy size, and the shipped example configurations."""

import glob
import json
import os
import runpy
import sys

import pytest
import torch

from srrl_core.train import load_config_file, read_prompts
from srrl_core.training import TrainConfig
from tests.helpers.support import REPO


def test_gpu_sd15_benchmark_runs_its_code_path_with_a_tiny_unet(capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = runpy.run_path(os.path.join(REPO, "bench", "gpu_sd15_training.py"))
        rows = module["main"](["--tiny", "--device", "cpu", "--dtype", "fp32", "--batches", "1", "2", "--iterations", "1"])
    finally:
        torch.set_num_threads(threads)
    assert [r["kind"] for r in rows] == ["train step", "train step", "rollout step (no grad)"]
    assert all(r["per_s"] > 0 for r in rows)
    assert "| train step | 2 (4) |" in capsys.readouterr().out


def test_gpu_flux_benchmark_runs_its_code_path_with_a_pinned_attention_backend(capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = runpy.run_path(os.path.join(REPO, "bench", "gpu_flux_memory.py"))
        rows = module["main"](["--tiny", "--device", "cpu", "--attention", "math"])
    finally:
        torch.set_num_threads(threads)
    measured, full = rows[:3], rows[3]
    assert [(r["double"], r["single"]) for r in measured] == [(1, 2), (2, 2), (1, 3)]
    per_double = measured[1]["base_params"] - measured[0]["base_params"]
    per_single = measured[2]["base_params"] - measured[0]["base_params"]
    assert full["base_params"] == measured[0]["base_params"] + 18 * per_double + 36 * per_single
    assert "attention math" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.*ml"))), ids=os.path.basename)
def test_example_configs_parse_and_validate(path):
    data = load_config_file(path)
    config = TrainConfig.from_dict(data["training"])
    assert read_prompts(data, os.path.dirname(path)) and config.lora_name and "backend" in data["reward"]
    assert data["model"]["name"] in ("tiny", "diffusers", "toy")


def test_config_files_reject_unknown_sections(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("[trainig]\nsteps = 3\n")
    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) \['trainig'\]"):
        load_config_file(str(bad))
    with pytest.raises(ValueError, match="must end in .toml, .yaml or .yml"):
        load_config_file(sys.executable)


def legacy(tmp_path, *rows):
    """A results.jsonl written before rows kept their verdicts."""
    path = tmp_path / "legacy.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "verdicts"}) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_toyworld_merge_keeps_one_base_row_and_refuses_other_held_out_sets(tmp_path):
    bench = runpy.run_path(os.path.join(REPO, "bench", "bench_toyworld.py"))
    merged_results, head_to_head = bench["merged_results"], bench["head_to_head"]
    base = {"method": "base", "compliance": 0.5, "ci": [0.4, 0.6], "n": 8, "per_family": {}, "verdicts": "11110000"}
    srrl = {**base, "method": "SRRL seed 0", "stages": 16, "train_images": 1248, "verdicts": "11111110"}
    ddpo = {**base, "method": "DDPO seed 0", "stages": 16, "train_images": 1280, "verdicts": "11110001"}
    files = []
    for name, rows in (("a", [base, srrl]), ("b", [base, ddpo]), ("other", [{**base, "compliance": 0.4}, ddpo])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        files.append(str(path))
    rows = merged_results(files[:2])
    assert [row["method"] for row in merged_results([files[0], legacy(tmp_path, base, ddpo)])] == ["base", "SRRL seed 0", "DDPO seed 0"]
    assert [row["method"] for row in rows] == ["base", "SRRL seed 0", "DDPO seed 0"]
    # Paired on the same held-out pairs: SRRL alone right on 3 (pairs 5-7), DDPO alone on 1 (pair 8).
    assert "| 3 / 1 | 0.62 |" in head_to_head(rows)
    assert len(head_to_head([rows[0], rows[1], {**ddpo, "stages": 32}]).splitlines()) == 2  # other budget: no pair
    with pytest.raises(ValueError, match="same base row"):
        merged_results([files[0], files[2]])
    # The training split has its own column; rows from before it was measured leave it empty.
    seen = {**srrl, "calls_per_sample": 10, "train_split": {"compliance": 0.75, "ci": [0.4, 0.9], "gained": 3, "lost": 1}}
    assert bench["format_row"](seen, 0.5).endswith("| 0.750 (3 / 1) |  |")
    assert bench["format_row"]({**srrl, "calls_per_sample": 10}, 0.5).endswith("|  |  |")
    # So has the mirror test (rows from before it leave it empty, as above).
    both = {**seen, "mirror": {"compliance": 0.25, "ci": [0.1, 0.5], "gained": 0, "lost": 2, "mcnemar_p": 0.5}}
    assert bench["format_row"](both, 0.5).endswith("| 0.750 (3 / 1) | 0.250 (0 / 2, 0.5) |")


def test_toyworld_versus_pools_paired_runs_and_refuses_mismatched_pairs(tmp_path):
    versus_table = runpy.run_path(os.path.join(REPO, "bench", "bench_toyworld.py"))["versus_table"]
    base = {"method": "base", "compliance": 0.5, "ci": [0.4, 0.6], "n": 8, "per_family": {}, "verdicts": "11110000"}

    def run(name, *rows):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return str(path)

    a0 = run("a0", base, {**base, "method": "SRRL seed 0", "verdicts": "11111110"})
    b0 = run("b0", base, {**base, "method": "DDPO seed 0", "verdicts": "11110001"},
             {**base, "method": "SRRL lr=0 seed 0", "verdicts": "11110000"})
    other = {**base, "verdicts": "00001111"}
    a1 = run("a1", other, {**other, "method": "SRRL seed 1", "verdicts": "10001111"})
    b1 = run("b1", other, {**other, "method": "DDPO seed 1", "verdicts": "01111111"})
    table = versus_table([[a0, f"{b0}@DDPO seed 0"], [a1, b1]]).splitlines()
    # Pair 0: A alone right on pairs 5-7, B alone on pair 8 (3 / 1, p = 0.625); the last row of b0 is the control.
    assert table[2].startswith("| SRRL seed 0 | DDPO seed 0 |") and table[2].endswith("| 3 / 1 | 0.62 |")
    assert "| 3 / 1 | 0.62 |" not in versus_table([[a0, b0]])  # without @METHOD the last row (the control) is B
    # Pair 1: A 1 / 3 against B; pooled over both, 4 / 4 (p = 1), and A gains 4 / loses 0 against the base (p = 2 / 16).
    assert table[3].endswith("| 1 / 3 | 0.62 |")
    assert table[4].startswith("| **pooled (2 pairs)** |  | 0.500") and table[4].endswith("| 4 / 4 | 1 |")
    assert "| 4 / 0 (p = 0.12) |" in table[4]
    # Between the two training seeds: A - B is +0.25 then -0.25 (mean 0, sign-flip p = 1), A - base +0.375 / +0.125.
    assert "| A - B (2 seeds) | +0.250 / -0.250 | +0.000 | 0.354 |" in table[10] and table[10].endswith("| 1 | 1 / 1 |")
    assert table[8].endswith("| 0.5 | 2 / 0 |")
    with pytest.raises(ValueError, match="not evaluated on the same held-out pairs"):
        versus_table([[a0, b1]])
    with pytest.raises(ValueError, match="has no row DDPO seed 9"):
        versus_table([[a0, f"{b0}@DDPO seed 9"]])


def test_toyworld_between_seeds_takes_the_training_seed_as_the_unit():
    between_seeds_line = runpy.run_path(os.path.join(REPO, "bench", "bench_toyworld.py"))["between_seeds_line"]
    # Mean 0.14, SD 0.1451 (n - 1), t(3, 0.975) = 3.1824: 0.14 -/+ 0.2310. Of the 16 sign patterns, |sum| >= 0.56
    # for 4 (the observed one, -0.04 flipped, and their negatives): p = 0.25.
    line = between_seeds_line("A - B", [0.1, 0.2, 0.3, -0.04])
    assert line == "| A - B (4 seeds) | +0.100 / +0.200 / +0.300 / -0.040 | +0.140 | 0.145 | [-0.091, +0.371] | 0.25 | 3 / 1 |"
    assert "| 0.002 | 10 / 0 |" in between_seeds_line("A - base", [0.01 * k for k in range(1, 11)])  # 2 of 2^10 patterns


def test_flow_rollout_benchmark_reads_the_shipped_step_exactly():
    """The benchmark's DDIM rows are read off the shipped step: its noise at eta = 1 is the DDPM posterior's, its
    gain and offset at eta = 0 are Euler's on the exact denoiser's velocity; its error measure is 0 on the marginals."""
    bench = runpy.run_path(os.path.join(REPO, "bench", "bench_flow_rollout.py"))
    _, _, std = bench["ddim_affine"](1.0)(0.6, 0.4)
    # DDPM posterior on rectified flow (alpha = 1 - sigma): Var = s'^2 (1 - (a s' / (a' s))^2).
    a, s, a_next, s_next = 0.4, 0.6, 0.6, 0.4
    assert std**2 == pytest.approx(s_next**2 * (1 - (a * s_next / (a_next * s)) ** 2), rel=1e-12)
    assert bench["errors"]([1.0, 0.5, 0.0], [(0.0, 1.0), (0.35, 0.3125), (0.7, 0.25)])["final_var_error"] == pytest.approx(0.0)
    # At eta = 0 the step is Euler on the velocity v = (x - x0_hat) / sigma, x0_hat = k x + c.
    k, c = bench["denoiser_gain"](0.6)
    gain, offset, std = bench["ddim_affine"](0.0)(0.6, 0.4)
    assert (gain, offset, std) == pytest.approx((1 - 0.2 * (1 - k) / 0.6, 0.2 * c / 0.6, 0.0), rel=1e-12, abs=1e-15)
