"""Peak VRAM and throughput of SRRL's PPO update on an SD1.5-shaped UNet at 512 px (random weights, no download).

    python bench/gpu_sd15_training.py [--quick] [--dtype bf16|fp16] [--batches 1 2 4 8] [--no-checkpointing]
    python bench/gpu_sd15_training.py --tiny --device cpu      # the same code path on a toy UNet (tests use it)

The UNet is built from Stable Diffusion 1.5's configuration (860 M parameters, 64x64x4 latents, 77x768 text
states), cast to ``--dtype``, with rank-4 LoRA on every attention projection (float32) and, by default, gradient
checkpointing. One *training step* is a micro-batch of B transitions, each at its own noise level: one CFG-guided
forward over 2B network rows under autocast, the DDIM log-probability, the clipped PPO loss, backward, gradient
clipping and an AdamW step (with a gradient scaler for fp16). Reported: peak allocated VRAM of the step
(``torch.cuda.max_memory_allocated``) and transitions (samples) per second. A rollout row (no grad, eta = 1,
CFG 5) gives the sampling throughput for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srrl_core.adapters.diffusers_unet import DiffusersDenoiser, TextConditioning  # noqa: E402
from srrl_core.sampling import BranchNoise, ddim_sigmas, ddim_step  # noqa: E402
from srrl_core.training import PolicyModel, TrainConfig, Transitions, add_lora, take_rows, transition_losses  # noqa: E402
from srrl_core.training.models import SD_SCHEDULER_CONFIG  # noqa: E402

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)  # fmt: skip
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)  # fmt: skip
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build(unet_config: dict, device: torch.device, dtype: torch.dtype, checkpointing: bool, text_length: int) -> tuple[PolicyModel, list]:
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the cast below is what we want; skip diffusers' advice on it

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: seconds instead of a minute on the CPU
        unet = UNet2DConditionModel(**unet_config)
    unet = unet.to(dtype).eval().requires_grad_(False)
    params = add_lora(unet, rank=4, alpha=4.0)
    with torch.no_grad():  # non-zero LoRA: every weight gets a gradient, as after the first update
        for p in params:
            p.normal_(0, 0.01)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    denoiser = DiffusersDenoiser(unet, SD_SCHEDULER_CONFIG)
    width, size = unet_config["cross_attention_dim"], unet_config["sample_size"]
    policy = PolicyModel(
        network=unet, denoiser=denoiser, parametrization=denoiser.parametrization,
        encode=lambda prompts: TextConditioning(torch.randn(len(prompts), text_length, width, device=device)),
        negative=TextConditioning(torch.randn(1, text_length, width, device=device)), decode=lambda x: x,
        sigmas=ddim_sigmas(SD_SCHEDULER_CONFIG, 20)[0], latent_shape=(4, size, size),
    )  # fmt: skip
    return policy, params


def transitions(policy: PolicyModel, cond, count: int, autocast) -> Transitions:
    """``count`` transitions at random steps, recorded with the policy itself (so PPO ratios start at 1)."""
    device, gen = policy.device, torch.Generator().manual_seed(0)
    step = torch.randint(0, policy.steps, (count,), generator=gen)
    rows = torch.randint(0, cond.batch_size, (count,), generator=gen)
    sigma, sigma_next = policy.sigmas[step].float().to(device), policy.sigmas[step + 1].float().to(device)
    x = torch.randn((count,) + policy.latent_shape, generator=gen).to(device) * (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
    with torch.no_grad(), autocast():
        denoised = policy.guided(take_rows(cond, rows))(x, sigma, 5.0).float()
    out = ddim_step(policy.parametrization, x, denoised, sigma, sigma_next, 1.0, BranchNoise.for_batch(0, count).randn_like(x))
    return Transitions(x, out.prev_sample, sigma, sigma_next, out.log_prob, torch.randn(count, generator=gen).to(device), rows)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(policy, params, cond, data: Transitions, batch: int, iterations: int, autocast, scaler) -> tuple[float, float]:
    """(seconds per step, peak VRAM GiB) of ``iterations`` full training steps at micro-batch ``batch``."""
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, eps=1e-8)
    config, device = TrainConfig(), policy.device

    def step(i: int) -> None:
        index = (torch.arange(batch) + i * batch) % len(data)
        losses, _ = transition_losses(policy, cond, data.take(index), config, autocast)
        loss = losses.mean()
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # warm-up (allocator, kernels)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(iterations):
        step(i + 1)
    synchronize(device)
    seconds = (time.perf_counter() - start) / iterations
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def rollout_step(policy, cond, batch: int, iterations: int, autocast) -> tuple[float, float]:
    """(seconds per step, peak VRAM GiB) of a no-grad sampling step (eta = 1, CFG 5) over ``batch`` rows."""
    device = policy.device
    rows = torch.arange(batch) % cond.batch_size
    guided = policy.guided(take_rows(cond, rows))
    x = torch.randn((batch,) + policy.latent_shape, device=device) * 14.6
    sigma, sigma_next = policy.sigmas[:2].float().to(device)
    noise = BranchNoise.for_batch(0, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = None
    for i in range(iterations + 1):
        if i == 1:
            synchronize(device)
            start = time.perf_counter()
        with torch.no_grad(), autocast():
            denoised = guided(x, sigma.expand(batch), 5.0).float()
        ddim_step(policy.parametrization, x, denoised, sigma.expand(batch), sigma_next.expand(batch), 1.0, noise.randn_like(x))
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - start) / iterations, peak


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="micro-batches 1, 4, 8 and 3 timed steps each (< 3 min on an H100)")
    parser.add_argument("--tiny", action="store_true", help="a toy UNet instead of SD1.5 (checks the code path on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--batches", type=int, nargs="+", help="micro-batch sizes (transitions per step)")
    parser.add_argument("--iterations", type=int, help="timed steps per micro-batch size")
    parser.add_argument("--no-checkpointing", action="store_true", help="disable gradient checkpointing")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    batches = args.batches or ([1, 2] if args.tiny else [1, 4, 8] if args.quick else [1, 2, 4, 8, 16])
    iterations = args.iterations or (2 if args.tiny else 3 if args.quick else 10)
    unet_config = TINY_UNET if args.tiny else SD15_UNET
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("dtype fp16 needs a GPU; use bf16 or fp32 with --device cpu")
    started = time.perf_counter()
    policy, params = build(unet_config, device, dtype, not args.no_checkpointing, 8 if args.tiny else 77)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    cond = policy.encode(["prompt"] * 4)
    data = transitions(policy, cond, max(batches) * (iterations + 1), autocast)
    rows = []
    for batch in batches:
        seconds, peak = train_steps(policy, params, cond, data, batch, iterations, autocast, scaler)
        rows.append({"kind": "train step", "batch": batch, "seconds": seconds, "per_s": batch / seconds, "peak_gib": peak})
    for batch in batches[-1:]:
        seconds, peak = rollout_step(policy, cond, batch * 4, iterations, autocast)
        rows.append({"kind": "rollout step (no grad)", "batch": batch * 4, "seconds": seconds, "per_s": batch * 4 / seconds, "peak_gib": peak})
    name = "tiny UNet" if args.tiny else "SD1.5 UNet (860 M, random weights), 512 px (64x64 latents), 77 tokens"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}; {gpu}; weights {args.dtype} + fp32 LoRA r4 on attention; gradient checkpointing "
          f"{'off' if args.no_checkpointing else 'on'}; torch {torch.__version__}; total {time.perf_counter() - started:.0f} s\n")  # fmt: skip
    print("| step | transitions per step (network rows) | s / step | transitions / s | peak VRAM (GiB) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['batch']} ({2 * r['batch']}) | {r['seconds']:.3f} | {r['per_s']:.2f} | {r['peak_gib']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
