"""Command line: ``python -m srrl_core.train --config FILE`` (TOML or YAML); several processes with
``accelerate launch [--num_processes N] -m srrl_core.train --config FILE``.

The file has four parts (see configs/ for commented examples)::

    prompts = ["a ball rolling down a ramp", ...]   # or prompts_file = "prompts.txt" (one per line, # comments)
    export_key_style = "native"                     # "native" (the network's names) or "ldm"
    [model]     name = "tiny" | "diffusers" | "toy" | a registered builder, plus its options
    [reward]    backend = "<srrl_core.rewards backend>", plus its options
    [training]  any TrainConfig field
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger("srrl_core.train")
TOP_LEVEL = {"model", "reward", "training", "prompts", "prompts_file", "export_key_style"}


def load_config_file(path: str) -> dict:
    """Parse a .toml (tomllib) or .yaml/.yml (pyyaml) file into a dict."""
    if not os.path.isfile(path):
        raise ValueError(f"config must be an existing .toml or .yaml file, got {path!r}")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".toml":
        import tomllib

        with open(path, "rb") as f:
            data = tomllib.load(f)
    elif extension in (".yaml", ".yml"):
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    else:
        raise ValueError(f"config must end in .toml, .yaml or .yml, got {path!r}")
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must hold a table/mapping at the top level")
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise ValueError(f"config {path} has unknown top-level key(s) {unknown}; valid keys are {sorted(TOP_LEVEL)}")
    return data


def read_prompts(data: dict, base_dir: str) -> list[str]:
    prompts = list(data.get("prompts") or [])
    if data.get("prompts_file"):
        path = os.path.join(base_dir, data["prompts_file"])
        with open(path, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError("prompts must list at least one prompt (give prompts = [...] or prompts_file = ...)")
    return prompts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m srrl_core.train", description="SRRL LoRA training for diffusion models.")
    parser.add_argument("--config", required=True, help="TOML or YAML run configuration")
    parser.add_argument("--output-dir", help="override training.output_dir")
    parser.add_argument("--stages", type=int, help="override training.stages")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if output_dir holds a checkpoint")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from accelerate import Accelerator

    from .rewards import load_reward
    from .training import AccelerateProcesses, SRRLTrainer, TrainConfig, build_policy
    from .training.export import is_flow_transformer

    data = load_config_file(args.config)
    training = dict(data.get("training") or {})
    if args.output_dir:
        training["output_dir"] = args.output_dir
    if args.stages is not None:
        training["stages"] = args.stages
    if args.no_resume:
        training["resume"] = False
    config = TrainConfig.from_dict(training)
    prompts = read_prompts(data, os.path.dirname(os.path.abspath(args.config)))
    export_style = data.get("export_key_style", "native")
    if export_style not in ("native", "ldm"):
        raise ValueError(f"export_key_style must be 'native' or 'ldm', got {export_style!r}")

    accelerator = Accelerator(cpu=args.cpu)
    model_spec = dict(data.get("model") or {"name": "tiny"})
    model_spec["device"] = str(accelerator.device)  # one device per process
    policy = build_policy(model_spec, steps=config.steps)
    if export_style == "ldm" and is_flow_transformer(policy.network):  # refuse now, not after training
        raise ValueError(f"export_key_style 'ldm' is for SD UNets; a {type(policy.network).__name__} exports its "
                         "diffusers names (lora_transformer_...), which ComfyUI maps: use export_key_style = \"native\"")
    reward_spec = dict(data.get("reward") or {})
    if "backend" not in reward_spec:
        raise ValueError("reward must name a backend, e.g. [reward] backend = \"brightness_band\"")
    reward = load_reward(reward_spec.pop("backend"), **reward_spec)

    trainer = SRRLTrainer(policy, reward, prompts, config, distributed=AccelerateProcesses(accelerator))
    summary = trainer.train()
    if accelerator.is_main_process and export_style == "ldm" and summary["lora_path"]:
        summary["lora_path_ldm"] = trainer.export_lora(trainer.lora_path().replace(".safetensors", "_ldm.safetensors"), key_style="ldm")
    if accelerator.is_main_process:
        print(format_summary(summary))
    return summary


NOOP_HINT = " -- the LoRA never moved: check that the reward varies between samples, the thresholds, learning_rate"


def format_summary(summary: dict) -> str:
    rows = [
        ("stages run", f"{summary['stages_run']} (now at {summary['stage']} / {summary['stages']})"),
        ("resumed from", summary["resumed_from"] or "-"),
        ("optimiser steps", summary["optimizer_steps"]),
        ("kept trajectories", f"{summary['kept_trajectories']} ({summary['skipped_updates']} stages kept none)"),
        ("stages that changed nothing", f"{summary['noop_stages']}" + (NOOP_HINT if summary["noop_stages"] == summary["stages_run"] > 0 else "")),
        ("reward mean, first -> last stage", _pair(summary["reward_mean_first"], summary["reward_mean_last"])),
        ("model calls", summary["model_calls"]),
        ("time", f"{summary['seconds']:.1f} s"),
        ("LoRA", summary.get("lora_path") or "- (run not finished)"),
    ]
    if summary.get("lora_path_ldm"):
        rows.append(("LoRA (LDM keys)", summary["lora_path_ldm"]))
    width = max(len(k) for k, _ in rows)
    return "\nSRRL training summary\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows) + "\n"


def _pair(first, last) -> str:
    return "-" if first is None else f"{first:.4f} -> {last:.4f}"


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
