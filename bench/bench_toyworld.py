"""Does SRRL improve reasoning? Physical compliance on held-out toy-world prompts and seeds.

Methods (same base model, same held-out prompts x seeds, verdicts by the pixel verifiers):
  base               plain DDIM
  reflect K          the reflective sampler, K = 1..4 rounds, 2 branches, reward-driven (best) selection
  SRRL               LoRA trained by SRRL (reflection, branching, best/worst selection), sampled plainly
  SRRL + reflect     the SRRL LoRA with K = 2 reflective rounds
  DDPO               LoRA trained by DDPO (independent trajectories, every transition, no reflection, no
                     branching) with as many sampled images as SRRL's training sampled
Prints a markdown table with 95% Wilson intervals, model calls and wall time.

    python bench/bench_toyworld.py [--stages 10 --prompts 24 --seeds 4 --threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srrl_core.toyworld import sample_prompts  # noqa: E402
from srrl_core.toyworld.experiment import evaluate  # noqa: E402
from srrl_core.toyworld.verifiers import ToyPhysicsReward  # noqa: E402
from srrl_core.training import SRRLTrainer, TrainConfig, build_policy  # noqa: E402

STEPS, SCALE = 10, 4.0  # as the main job: 10 DDIM steps suffice for the 32 px toy model


def srrl_config(stages: int, out: str) -> TrainConfig:
    return TrainConfig(
        steps=STEPS, stages=stages, prompts_per_stage=8, split_time=4, split_step_stride=2, rounds_every=2, max_rounds=2,
        rollout_scale=SCALE, learning_rate=3e-4, trajectories_per_update=16, micro_batch_size=16,
        output_dir=out, lora_name="srrl", tensorboard=False, resume=False, progress=False,
    )  # fmt: skip


def ddpo_config(stages: int, images_per_stage: int, out: str) -> TrainConfig:
    """DDPO in the same trainer: one sibling per group (no branching), every trajectory kept (thresholds far
    below any advantage), all steps trained, no reflection."""
    return TrainConfig(
        steps=STEPS, stages=stages, prompts_per_stage=images_per_stage, split_time=1, split_step_start=STEPS,
        split_step_stride=0, curriculum_period=1, max_rounds=0, positive_threshold=-1e9, negative_threshold=-1e9,
        rollout_scale=SCALE, learning_rate=3e-4, trajectories_per_update=16, micro_batch_size=16,
        output_dir=out, lora_name="ddpo", tensorboard=False, resume=False, progress=False,
    )  # fmt: skip


def row(name, evaluation, seconds, extra_calls=0):
    low, high = evaluation.interval()
    return f"| {name} | {evaluation.rate:.3f} | [{low:.2f}, {high:.2f}] | {evaluation.model_calls + extra_calls} | {seconds:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=24, help="held-out prompts")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per held-out prompt")
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="bench/results/toyworld")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    heldout = sample_prompts("heldout", args.prompts, seed=1)
    seeds = list(range(5000, 5000 + args.seeds))
    train_prompts = sample_prompts("train", 256, seed=0)
    lines = ["| method | compliance | 95% CI | model calls (eval + training) | wall s |", "|---|---|---|---|---|"]

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - start

    policy = build_policy("toy", STEPS)
    for k in range(args.max_rounds + 1):
        evaluation, seconds = timed(lambda: evaluate(policy, heldout, seeds, rounds=k, branches=1 if k == 0 else 2, scale=SCALE, strength=0.6))
        lines.append(row("base" if k == 0 else f"reflect K={k}", evaluation, seconds))
        print(lines[-1], flush=True)

    srrl = SRRLTrainer(policy, ToyPhysicsReward(), train_prompts, srrl_config(args.stages, os.path.join(args.out, "srrl")))
    summary, train_seconds = timed(srrl.train)
    images = sum(h["model_calls"] for h in srrl.history)  # not images: calls; images are counted below
    sampled = sum(8 * 4 + 8 * h["reflection_rounds"] for h in srrl.history)  # rollout siblings + reflective passes
    for name, rounds in (("SRRL", 0), ("SRRL + reflect K=2", 2)):
        evaluation, seconds = timed(lambda: evaluate(policy, heldout, seeds, rounds=rounds, branches=1 if rounds == 0 else 2, scale=SCALE, strength=0.6))
        lines.append(row(name, evaluation, seconds + train_seconds, summary["model_calls"]))
        print(lines[-1], flush=True)

    ddpo_policy = build_policy("toy", STEPS)
    ddpo = SRRLTrainer(ddpo_policy, ToyPhysicsReward(), train_prompts,
                       ddpo_config(args.stages, max(1, sampled // args.stages), os.path.join(args.out, "ddpo")))  # fmt: skip
    ddpo_summary, ddpo_seconds = timed(ddpo.train)
    evaluation, seconds = timed(lambda: evaluate(ddpo_policy, heldout, seeds, scale=SCALE))
    lines.append(row(f"DDPO ({sampled} sampled images, as SRRL)", evaluation, seconds + ddpo_seconds, ddpo_summary["model_calls"]))
    print("\n".join([f"held-out: {len(heldout)} prompts x {len(seeds)} seeds; {args.stages} training stages; "
                     f"SRRL sampled {sampled} images in training ({images} model calls)"] + lines))  # fmt: skip


if __name__ == "__main__":
    main()
