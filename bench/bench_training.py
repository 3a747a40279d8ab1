"""Update throughput of SRRL's batched PPO step against the reference loop's structure, on the tiny UNet.

The reference (B²-DiffuRL / SRRL code) trains one timestep of one sample per forward/backward: batch 1, CFG's
conditional and unconditional rows batched together (2 network rows). Ours evaluates a micro-batch of B
transitions, each at its own noise level, in one call (2B rows). Both run the same function
(``srrl_core.training.transition_losses``) on the same transitions with the same loss normalisation, so the
gradients agree (checked below) and only the batching differs.

    python bench/bench_training.py [--transitions 64] [--epochs 2] [--batches 1 8 32] [--threads 1] [--quick]

Each configuration runs in its own process so that its peak resident memory (``ru_maxrss``) is its own; the
table reports the peak above the process's state after setup (model, LoRA, transitions), before any update.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srrl_core.sampling import BranchNoise, ddim_step  # noqa: E402
from srrl_core.training import TrainConfig, Transitions, add_lora, build_policy, take_rows, transition_losses  # noqa: E402

PROMPTS = ["a ball rolling down a ramp", "water flows upward in a tilted glass", "a balance tilting to the heavier side"]


def setup(transitions: int, sample_size: int, steps: int = 20, seed: int = 0):
    """The tiny policy with LoRA, and ``transitions`` recorded DDIM transitions at random steps and prompts."""
    policy = build_policy({"name": "tiny", "sample_size": sample_size}, steps)
    params = add_lora(policy.network, rank=4, alpha=4.0)
    with torch.no_grad():  # a non-zero LoRA so that every weight gets a gradient
        for p in params:
            p.normal_(0, 0.02, generator=torch.Generator().manual_seed(p.numel()))
    cond = policy.encode(PROMPTS)
    gen = torch.Generator().manual_seed(seed)
    step = torch.randint(0, steps, (transitions,), generator=gen)  # SD's last step (to sigma 0.03) is stochastic too
    rows = torch.randint(0, len(PROMPTS), (transitions,), generator=gen)
    sigma, sigma_next = policy.sigmas[step].float(), policy.sigmas[step + 1].float()
    x = torch.randn((transitions,) + policy.latent_shape, generator=gen) * (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
    with torch.no_grad():
        denoised = policy.guided(take_rows(cond, rows))(x, sigma, 5.0)
        out = ddim_step(policy.parametrization, x, denoised, sigma, sigma_next, 1.0, BranchNoise.for_batch(seed, transitions).randn_like(x))
    advantages = torch.randn(transitions, generator=gen).clamp(-5, 5)
    batch = Transitions(x, out.prev_sample, sigma, sigma_next, out.log_prob, advantages, rows)
    return policy, params, cond, batch


def update(policy, params, cond, batch: Transitions, micro_batch: int, epochs: int, optimizer=None) -> None:
    """``epochs`` passes over ``batch`` in micro-batches; one optimiser step per pass (when given)."""
    config = TrainConfig()
    for _ in range(epochs):
        for start in range(0, len(batch), micro_batch):
            index = torch.arange(start, min(start + micro_batch, len(batch)))
            losses, _ = transition_losses(policy, cond, batch.take(index), config)
            (losses.sum() / len(batch)).backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def measure(args) -> dict:
    """One configuration, in this process: seconds and peak memory of the update."""
    torch.set_num_threads(args.threads)
    policy, params, cond, batch = setup(args.transitions, args.sample_size)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before any backward: the update's own peak
    update(policy, params, cond, batch.take(torch.arange(min(args.micro_batch, len(batch)))), args.micro_batch, 1)  # warm-up
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    update(policy, params, cond, batch, args.micro_batch, args.epochs, optimizer)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"micro_batch": args.micro_batch, "seconds": seconds, "transitions_per_s": args.epochs * args.transitions / seconds,
            "peak_rss_mib": peak / 1024, "extra_peak_mib": (peak - baseline) / 1024}  # fmt: skip


def gradient_check(sample_size: int, micro_batch: int) -> float:
    """Largest relative difference between the batched and the one-at-a-time gradients."""
    policy, params, cond, batch = setup(16, sample_size)
    grads = []
    for size in (1, micro_batch):
        update(policy, params, cond, batch, size, 1)
        grads.append(torch.cat([p.grad.flatten() for p in params]))
        for p in params:
            p.grad = None
    return float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transitions", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="micro-batch sizes; 1 is the reference")
    parser.add_argument("--sample-size", type=int, default=8, help="latent side of the tiny UNet (8 = 64 px images)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--micro-batch", type=int, help=argparse.SUPPRESS)  # internal: measure one configuration
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (bench/run_all.py --quick); explicit flags still win")
    args = parser.parse_args(argv)
    if args.quick:  # re-parse so that only the defaults change
        parser.set_defaults(transitions=8, epochs=1, batches=[1, 4])
        args = parser.parse_args(argv)
    if args.micro_batch is not None:
        print(json.dumps(measure(args)))
        return []
    rows = []
    for size in args.batches:
        command = [sys.executable, os.path.abspath(__file__), "--micro-batch", str(size), "--transitions", str(args.transitions),
                   "--epochs", str(args.epochs), "--sample-size", str(args.sample_size), "--threads", str(args.threads)]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.set_num_threads(args.threads)
    diff = gradient_check(args.sample_size, max(args.batches))
    reference = next((r for r in rows if r["micro_batch"] == 1), rows[0])
    print(f"\nPPO update, tiny UNet ({args.sample_size}x{args.sample_size} latents), {args.transitions} transitions x "
          f"{args.epochs} epochs, CFG 5, {args.threads} CPU thread(s), torch {torch.__version__}\n")  # fmt: skip
    print("| structure | micro-batch (network rows) | time (s) | transitions / s | speed-up | peak RSS (MiB) | extra peak (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = "reference loop (1 timestep, batch 1)" if r["micro_batch"] == 1 else "SRRL batched"
        print(f"| {name} | {r['micro_batch']} ({2 * r['micro_batch']}) | {r['seconds']:.2f} | {r['transitions_per_s']:.1f} | "
              f"{r['transitions_per_s'] / reference['transitions_per_s']:.2f}x | {r['peak_rss_mib']:.0f} | {r['extra_peak_mib']:.1f} |")  # fmt: skip
    print(f"\nbatched vs one-at-a-time gradients: max relative difference {diff:.1e} (same math)")
    return rows


if __name__ == "__main__":
    main()
