"""Reflective Sampler inside ComfyUI versus the stock KSampler making the same number of model calls.

Ratio = wall time of SRRL Reflective Sampler (K rounds, G branches) / wall time of KSampler (euler) with as many
steps as the reflective run makes model calls (batch = G latents, so every call has the same shape). Both run in
one process on the same host and checkpoint (the tiny SD1.5-detectable one unless --checkpoint is given).
Run: ``python bench/bench_host.py [--rounds 2 --branches 1 --steps 10 --size 64 --repeats 3] [--quick]`` after
``make setup-host`` (SRRL_COMFYUI_DIR selects another host).
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

from tests.helpers import hostlib  # noqa: E402

from srrl_core.sampling import planned_model_calls  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--branches", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", help="a checkpoint file (default: the tiny SD1.5-detectable one)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (bench/run_all.py --quick); explicit flags still win")
    args = parser.parse_args()
    if args.quick:  # re-parse so that only the defaults change
        parser.set_defaults(rounds=1, steps=3, size=32, repeats=1)
        args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    host, checkpoint, _ = hostlib.prepare_host(hostlib.check_host())
    inproc = hostlib.load_inprocess(host, args.checkpoint or checkpoint)
    pack, nodes = inproc.load_pack(), inproc.nodes()
    pos, neg = inproc.encode("a ball rolling down a ramp"), inproc.encode("")
    latent = {"samples": torch.zeros(args.branches, 4, args.size // 8, args.size // 8)}
    one = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    calls = planned_model_calls(args.steps, args.rounds, args.strength)
    sampler = pack.nodes.reflective_sampler.ReflectiveSampler()

    def reflective():
        sampler.sample(inproc.model, pos, neg, one, seed=1, steps=args.steps, cfg=5.0, scheduler="normal",
                       rounds=args.rounds, branches=args.branches, renoise_strength=args.strength, inversion_cfg=0.1,
                       selection="last", temperature=1.0, eta=0.0, early_stop=False, stop_at=0.0)  # fmt: skip

    def stock():
        nodes.KSampler().sample(inproc.model, 1, calls, 5.0, "euler", "normal", pos, neg, latent, denoise=1.0)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.inference_mode():
        reflective(), stock()  # warm-up: model load, first-call allocations
        pairs = [(timed(reflective), timed(stock)) for _ in range(args.repeats)]
    ratios = [r / s for r, s in pairs]
    machine = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"| machine | K | G | steps | strength | model calls | Reflective Sampler s | KSampler s | ratio (median of {args.repeats}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {machine} | {args.rounds} | {args.branches} | {args.steps} | {args.strength} | {calls} | "
          f"{statistics.median(r for r, _ in pairs):.3f} | {statistics.median(s for _, s in pairs):.3f} | {statistics.median(ratios):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
