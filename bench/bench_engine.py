"""Overhead of the reflective engine over its floor, the model calls.

Ratio = wall time of ``reflective_sample`` with K rounds / wall time of the same number of UNet calls, with the
same batch shapes (cond + uncond rows, G branches), made directly in a loop. 1.00 means the engine costs nothing
beyond the network. Run: ``python bench/bench_engine.py [--rounds 3 --branches 2 --steps 20 --repeats 5] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srrl_core.adapters.diffusers_unet import DiffusersDenoiser, TextConditioning  # noqa: E402
from srrl_core.sampling import BranchNoise, ClassifierFreeGuidance, ddim_sigmas, prior_latent, reflective_sample  # noqa: E402
from tests.helpers.support import SD_SCHEDULER_CONFIG, tiny_unet  # noqa: E402


def sd15_unet():
    """The Stable Diffusion 1.5 UNet architecture with random weights (no download)."""
    from diffusers import UNet2DConditionModel

    from gpu_sd15_training import SD15_UNET

    torch.manual_seed(0)
    return UNet2DConditionModel(**SD15_UNET).eval().requires_grad_(False)


class NullNetwork(torch.nn.Module):
    """A stand-in UNet that costs nothing: what remains of a run's time is the engine's own overhead."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None):
        return UNetOutput(sample)


class UNetOutput:
    def __init__(self, sample):
        self.sample = sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--branches", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=16, help="latent side")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny", help="sd15: SD1.5-shaped UNet, random weights")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (bench/run_all.py --quick); explicit flags still win")
    args = parser.parse_args()
    if args.quick:  # re-parse so that only the defaults change
        parser.set_defaults(rounds=1, steps=4, size=8, repeats=1)
        args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    unet = (tiny_unet(sample_size=args.size) if args.model == "tiny" else sd15_unet()).to(device, dtype)
    context_dim = unet.config.cross_attention_dim
    denoiser = DiffusersDenoiser(unet, SD_SCHEDULER_CONFIG)
    gen = torch.Generator().manual_seed(0)
    cond, uncond = (torch.randn(1, 77 if args.model == "sd15" else 8, context_dim, generator=gen).to(device, dtype) for _ in range(2))
    guided = ClassifierFreeGuidance(denoiser, TextConditioning(cond), TextConditioning(uncond))
    sigmas, _ = ddim_sigmas(SD_SCHEDULER_CONFIG, args.steps)
    rows = args.branches
    noise = torch.randn(rows, 4, args.size, args.size, generator=gen).to(device, dtype)

    def reflective(guided=guided) -> int:
        result = reflective_sample(
            guided, prior_latent(guided, noise, sigmas[0]), sigmas, rounds=args.rounds, branches=args.branches,
            scale=3.0, eta=0.5, inversion_scale=0.1, renoise_strength=args.strength, noise=BranchNoise.for_batch(0, rows),
        )  # fmt: skip
        return result.model_calls

    calls = reflective()  # warm-up, and the number of model calls to match
    x = torch.randn(2 * rows, 4, args.size, args.size, generator=gen).to(device, dtype)
    states = torch.cat([cond.expand(rows, -1, -1), uncond.expand(rows, -1, -1)])
    timesteps = torch.linspace(999, 1, calls)

    def plain_loop() -> None:
        for i in range(calls):
            unet(x, timesteps[i], encoder_hidden_states=states)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.no_grad():
        plain_loop()
        pairs = [(timed(reflective), timed(plain_loop)) for _ in range(args.repeats)]
        null = ClassifierFreeGuidance(DiffusersDenoiser(NullNetwork(dtype), SD_SCHEDULER_CONFIG), guided.positive, guided.negative)
        overhead_ms = 1000 * statistics.median(timed(lambda: reflective(null)) for _ in range(args.repeats)) / calls
    ratios = [r / p for r, p in pairs]
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"| machine | model | latent | K | G | steps | strength | model calls | reflective s | plain loop s | ratio (median of {args.repeats}) | engine ms/call (null network) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {machine} | {args.model} {args.dtype} | {args.size}x{args.size} | {args.rounds} | {args.branches} | {args.steps} | {args.strength} | {calls} | "
        f"{statistics.median(r for r, _ in pairs):.3f} | {statistics.median(p for _, p in pairs):.3f} | {statistics.median(ratios):.3f} | {overhead_ms:.2f} |"
    )


if __name__ == "__main__":
    main()
