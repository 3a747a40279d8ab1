"""Overhead of the reflective engine over its floor, the model calls.

Three loops make the same number of UNet calls on the same batch shapes (cond + uncond rows x G branches):

- reflective: ``reflective_sample`` with K rounds (timestep lookup, CFG, DDIM updates, per-branch noise, inversion),
- plain:      the UNet called directly in a loop on a fixed latent (the floor),
- replay:     the UNet called directly on the very inputs the reflective run gave it (latents, timesteps, text
              states), so ``replay / plain`` is what the input *values* cost, apart from any engine code.

Ratio = reflective / plain: 1.00 means the engine costs nothing beyond the network. The loops run interleaved, their
order rotating every repeat, after a warm-up of each; the ratio is the median of the per-repeat ratios (and, as a
check against a busy machine, the ratio of the fastest repeats). On the CPU the thread's CPU time is measured too:
another process on the same core stretches wall time but hardly CPU time. "engine ms/call" is the engine alone on a
network that costs nothing (median of ``--repeats``): the part of the gap that no network speed removes.

Run: ``python bench/bench_engine.py --threads 1 [--rounds 3 --branches 2 --steps 20 --repeats 7] [--quick]``.
The last line printed is the table row.
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
from srrl_core.training.models import SD_SCHEDULER_CONFIG, tiny_unet  # noqa: E402


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


class Clocked(torch.nn.Module):
    """Wraps the UNet and adds up the CPU time spent inside its calls (CPU only: on CUDA it would need a sync)."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.inside = unet, 0.0

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None):
        start = time.thread_time()
        out = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
        self.inside += time.thread_time() - start
        return out


class Recorder(torch.nn.Module):
    """Wraps the UNet and keeps a copy of every call's inputs (for the replay loop)."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None):
        self.calls.append((sample.clone(), timestep.clone(), encoder_hidden_states.clone()))
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--branches", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=16, help="latent side")
    parser.add_argument("--strength", "--renoise-strength", dest="strength", type=float, default=1.0, help="renoise_strength")
    parser.add_argument("--eta", type=float, default=0.5)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=7)
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
    cuda = device.type == "cuda"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    unet = (tiny_unet(sample_size=args.size) if args.model == "tiny" else sd15_unet()).to(device, dtype)
    context_dim = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(0)
    cond, uncond = (torch.randn(1, 77 if args.model == "sd15" else 8, context_dim, generator=gen).to(device, dtype) for _ in range(2))
    recorder = Recorder(unet)
    denoiser = DiffusersDenoiser(recorder, SD_SCHEDULER_CONFIG)
    guided = ClassifierFreeGuidance(denoiser, TextConditioning(cond), TextConditioning(uncond))
    sigmas, _ = ddim_sigmas(SD_SCHEDULER_CONFIG, args.steps)
    rows = args.branches
    noise = torch.randn(rows, 4, args.size, args.size, generator=gen).to(device, dtype)

    def reflective(guided=guided) -> int:
        result = reflective_sample(
            guided, prior_latent(guided, noise, sigmas[0]), sigmas, rounds=args.rounds, branches=args.branches,
            scale=3.0, eta=args.eta, inversion_scale=0.1, renoise_strength=args.strength, noise=BranchNoise.for_batch(0, rows),
        )  # fmt: skip
        return result.model_calls

    with torch.no_grad():
        calls = reflective()  # warm-up, the number of model calls to match, and the inputs to replay
        recorded, recorder.calls = recorder.calls, []
        # Timed runs call the UNet directly, as the other loops do; on the CPU through a clock that splits each run's
        # CPU time into inside and outside the model calls (the within-run ratio: immune to the machine's load drift).
        clocked = None if cuda else Clocked(unet)
        denoiser.unet = clocked or unet
        x = torch.randn(2 * rows, 4, args.size, args.size, generator=gen).to(device, dtype)
        states = torch.cat([cond.expand(rows, -1, -1), uncond.expand(rows, -1, -1)])
        timesteps = torch.linspace(999, 1, calls)[:, None].repeat(1, 2 * rows).to(device).unbind()  # [2G] per call, as the engine

    def plain_loop() -> None:
        for t in timesteps:
            unet(x, t, encoder_hidden_states=states)

    def replay() -> None:
        for sample, t, text in recorded:
            unet(sample, t, encoder_hidden_states=text)

    def timed(fn) -> tuple[float, float]:
        """(wall s, CPU s of this thread); on CUDA the CPU time is not the cost and is reported as wall."""
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.thread_time()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - wall
        return wall, wall if cuda else time.thread_time() - cpu

    within = []

    def reflective_clocked() -> None:
        if clocked is not None:
            clocked.inside = 0.0
        cpu = time.thread_time()
        reflective()
        if clocked is not None:
            within.append((time.thread_time() - cpu) / clocked.inside)

    loops = {"reflective": reflective_clocked, "plain": plain_loop, "replay": replay}
    times = {name: [] for name in loops}
    with torch.no_grad():
        for warm_up in loops.values():
            warm_up()
        within.clear()
        names = list(loops)
        for r in range(args.repeats):
            for name in names[r % 3:] + names[:r % 3]:  # rotate the order: drift in the machine's load hits all three
                times[name].append(timed(loops[name]))
        null = ClassifierFreeGuidance(DiffusersDenoiser(NullNetwork(dtype), SD_SCHEDULER_CONFIG), guided.positive, guided.negative)
        reflective(null)
        overhead_ms = 1000 * statistics.median(timed(lambda: reflective(null))[1] for _ in range(max(args.repeats, 5))) / calls

    def ratio(a: str, b: str, clock: int) -> float:
        return statistics.median(ta[clock] / tb[clock] for ta, tb in zip(times[a], times[b]))

    def fastest(name: str, clock: int = 0) -> float:
        return min(t[clock] for t in times[name])

    wall = {name: statistics.median(t[0] for t in ts) for name, ts in times.items()}
    machine = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"load average {os.getloadavg()[0]:.1f}; per repeat (wall s) reflective {[round(t[0], 3) for t in times['reflective']]}, "
          f"plain {[round(t[0], 3) for t in times['plain']]}, replay {[round(t[0], 3) for t in times['replay']]}")
    print(f"engine beyond the network, real UNet: {1000 * (wall['reflective'] - wall['plain']) / calls:.2f} ms/call (wall medians); "
          f"null network: {overhead_ms:.2f} ms/call\n")
    print(f"| machine | model | latent | K | G | steps | renoise_strength | model calls | reflective s | plain loop s | "
          f"ratio (median of {args.repeats}) | ratio of fastest | CPU-time ratio | within-run ratio | replay / plain | "
          "engine ms/call (null network) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {machine} | {args.model} {args.dtype} | {args.size}x{args.size} | {args.rounds} | {args.branches} | {args.steps} | {args.strength} | {calls} | "
        f"{wall['reflective']:.3f} | {wall['plain']:.3f} | {ratio('reflective', 'plain', 0):.3f} | "
        f"{fastest('reflective') / fastest('plain'):.3f} | {ratio('reflective', 'plain', 1):.3f} | "
        f"{f'{statistics.median(within):.3f}' if within else 'n/a'} | {ratio('replay', 'plain', 0):.3f} | {overhead_ms:.2f} |"
    )


if __name__ == "__main__":
    main()
