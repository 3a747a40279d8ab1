"""The GPU benchmark's code path on a toy UNet, and the shipped example configurations."""

import glob
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
