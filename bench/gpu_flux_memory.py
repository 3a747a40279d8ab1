"""Peak VRAM of one LoRA update on a Flux-shaped transformer at full width, extrapolated to full depth.

    python bench/gpu_flux_memory.py [--quick] [--double-blocks 1] [--single-blocks 2] [--rank 4] [--no-checkpointing]
                                    [--attention update|torch|flash|efficient|cudnn|math]
    python bench/gpu_flux_memory.py --tiny --device cpu      # the same code path at toy width (seconds on a CPU)

A diffusers ``FluxTransformer2DModel`` is built with random weights (no download) at Flux.1's **full width**
(hidden 3072 = 24 heads x 128, joint_attention_dim 4096, pooled_projection_dim 768, in_channels 64, guidance
embedding) but only a few blocks. Base weights are bf16 and frozen; LoRA (the project's ``add_lora`` with
``FLUX_LORA_TARGETS``, diffusers key style) and the AdamW state are float32; gradient checkpointing is on unless
``--no-checkpointing``. One *update* is a forward through the project's ``DiffusersTransformerDenoiser`` under bf16
autocast at batch 1 and a 1024x1024 image's token count (a 16x128x128 latent = 4096 image tokens of 64 channels,
512 text tokens), a stand-in loss on the prediction (the PPO loss adds only element-wise work on the latent), backward,
gradient clipping and one AdamW step. Reported (``torch.cuda.max_memory_allocated``): the weights alone and the peak
of the update, for the chosen depth and again with one more double block and (separately) one more single block;
the differences give the cost per double and per single block, which the table extrapolates, linearly, to Flux.1's
19 double + 38 single blocks. On a CPU the VRAM columns read "n/a" and only the code path is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srrl_core.adapters.diffusers_transformer import LORA_TARGETS, DiffusersTransformerDenoiser  # noqa: E402
from srrl_core.adapters.diffusers_unet import TextConditioning  # noqa: E402
from srrl_core.training import add_lora  # noqa: E402
from srrl_core.training.ppo import update_attention  # noqa: E402

FLUX_WIDTH = dict(
    patch_size=1, in_channels=64, out_channels=None, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
TINY_WIDTH = dict(
    patch_size=1, in_channels=64, out_channels=None, attention_head_dim=32, num_attention_heads=2,
    joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
)  # fmt: skip
ATTENTION_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
FLUX_DEPTH = (19, 38)  # Flux.1 [dev] / [schnell]: double (joint) blocks, single blocks
FULL_SHAPE = dict(latent=128, text=512)  # 1024 px: 128x128 latent -> 64x64 = 4096 packed tokens; T5 at 512 tokens
TINY_SHAPE = dict(latent=16, text=16)  # 64 image tokens, 16 text tokens


def gib(device: torch.device, peak: bool = False) -> float:
    if device.type != "cuda":
        return float("nan")
    return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**30


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def attention_backend(name: str, device: torch.device):
    """The SRRL update's kernels ("update": :func:`update_attention`), torch's own SDPA choice ("torch"), or one
    backend pinned: isolates a kernel that fails on one card."""
    if name == "update":
        return update_attention(device)
    if name == "torch":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, ATTENTION_BACKENDS[name]))


def build(width: dict, double: int, single: int, device: torch.device, rank: int, checkpointing: bool):
    """(transformer with fp32 LoRA over frozen bf16 weights, its LoRA parameters)."""
    from diffusers import FluxTransformer2DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: seconds instead of minutes on the CPU
        net = FluxTransformer2DModel(num_layers=double, num_single_layers=single, **width)
    net = net.to(torch.bfloat16).eval().requires_grad_(False)
    params = add_lora(net, rank=rank, alpha=float(rank), targets=LORA_TARGETS[type(net).__name__], key_style="diffusers")
    with torch.no_grad():  # non-zero LoRA: every adapter weight gets a gradient, as after the first update
        for p in params:
            p.normal_(0, 0.01)
    if checkpointing:
        net.enable_gradient_checkpointing()
    return net, params


def measure(width: dict, shape: dict, double: int, single: int, device: torch.device, rank: int, checkpointing: bool) -> dict:
    """Weights-only memory, then the peak and wall time of one forward + backward + AdamW step at batch 1."""
    release(device)
    net, params = build(width, double, single, device, rank, checkpointing)
    release(device)  # drop the fp32 initialisation's transient peak: weights as they would be loaded in bf16
    weights = gib(device)
    base = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    lora = sum(p.numel() for p in params)

    denoiser = DiffusersTransformerDenoiser(net, guidance=3.5)
    gen = torch.Generator().manual_seed(0)
    channels, size = width["in_channels"] // 4, shape["latent"]
    x = torch.randn(1, channels, size, size, generator=gen).to(device)
    target = torch.randn(1, channels, size, size, generator=gen).to(device)
    cond = TextConditioning(torch.randn(1, shape["text"], width["joint_attention_dim"], generator=gen).to(device),
                            {"pooled_projections": torch.randn(1, width["pooled_projection_dim"], generator=gen).to(device)})  # fmt: skip
    sigma = torch.full((1,), 0.7, device=device)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, eps=1e-8)

    synchronize(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        denoised = denoiser(x, sigma, cond)
    loss = (denoised.float() - target).square().mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()} at {double} double + {single} single blocks")
    row = {"double": double, "single": single, "base_params": base, "lora_params": lora, "weights_gib": weights,
           "peak_gib": gib(device, peak=True), "seconds": seconds, "image_tokens": (size // 2) ** 2}  # fmt: skip
    del net, params, denoiser, optimizer, denoised, loss
    release(device)
    return row


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN: no CUDA


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="accepted for run_all on a GPU: the default run is already short")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="hidden 64 (2 heads), text dim 32, few tokens: the code path on a CPU")
    parser.add_argument("--double-blocks", type=int, default=1, help="double (joint) blocks of the base measurement")
    parser.add_argument("--single-blocks", type=int, default=2, help="single blocks of the base measurement")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (alpha = rank); TrainConfig's default is 4")
    parser.add_argument("--no-checkpointing", action="store_true", help="disable gradient checkpointing (to compare)")
    parser.add_argument("--attention", choices=("update", "torch", *ATTENTION_BACKENDS), default="update",
                        help="scaled-dot-product attention backend (update: the SRRL update's, every backend but cuDNN "
                             "on CUDA; torch: torch's own choice for the card)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available; use --tiny --device cpu for the code path")
    if args.double_blocks < 0 or args.single_blocks < 0 or args.double_blocks + args.single_blocks == 0:
        parser.error("--double-blocks and --single-blocks must be >= 0 and not both 0")
    width, shape = (TINY_WIDTH, TINY_SHAPE) if args.tiny else (FLUX_WIDTH, FULL_SHAPE)
    checkpointing = not args.no_checkpointing
    started = time.perf_counter()

    d, s = args.double_blocks, args.single_blocks
    with attention_backend(args.attention, device):
        runs = [measure(width, shape, dd, ss, device, args.rank, checkpointing) for dd, ss in ((d, s), (d + 1, s), (d, s + 1))]
    base, more_double, more_single = runs
    keys = ("base_params", "lora_params", "weights_gib", "peak_gib")
    per_double = {k: more_double[k] - base[k] for k in keys}
    per_single = {k: more_single[k] - base[k] for k in keys}
    full_d, full_s = FLUX_DEPTH
    full = {k: base[k] + (full_d - d) * per_double[k] + (full_s - s) * per_single[k] for k in keys}

    hidden = width["num_attention_heads"] * width["attention_head_dim"]
    name = ("toy Flux-shaped transformer" if args.tiny else "Flux.1-shaped transformer at full width (random weights)")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}: hidden {hidden} ({width['num_attention_heads']} heads x {width['attention_head_dim']}), text dim "
          f"{width['joint_attention_dim']}, {base['image_tokens']} image tokens x {width['in_channels']} ch + {shape['text']} text "
          f"tokens, batch 1; {gpu}; weights bf16 frozen + fp32 LoRA r{args.rank} on FLUX_LORA_TARGETS + fp32 AdamW; "
          f"gradient checkpointing {'on' if checkpointing else 'off'}; attention {args.attention}; torch {torch.__version__}; "
          f"total {time.perf_counter() - started:.0f} s\n")  # fmt: skip
    print("| configuration | base params (M) | LoRA params (M) | weights VRAM (GiB) | peak VRAM of the update (GiB) "
          "| update over the weights (GiB) | s / update |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| measured: {r['double']} double + {r['single']} single | {r['base_params'] / 1e6:.1f} | {r['lora_params'] / 1e6:.3f} "
              f"| {fmt(r['weights_gib'])} | {fmt(r['peak_gib'])} | {fmt(r['peak_gib'] - r['weights_gib'])} | {r['seconds']:.3f} |")  # fmt: skip
    for label, delta in (("per double block (difference)", per_double), ("per single block (difference)", per_single)):
        print(f"| {label} | {delta['base_params'] / 1e6:.1f} | {delta['lora_params'] / 1e6:.3f} | {fmt(delta['weights_gib'], 3)} "
              f"| {fmt(delta['peak_gib'], 3)} | {fmt(delta['peak_gib'] - delta['weights_gib'], 3)} | |")  # fmt: skip
    print(f"| **EXTRAPOLATION (not measured)**: {full_d} double + {full_s} single, linear in the per-block differences "
          f"| {full['base_params'] / 1e6:.1f} | {full['lora_params'] / 1e6:.3f} | {fmt(full['weights_gib'])} | {fmt(full['peak_gib'])} "
          f"| {fmt(full['peak_gib'] - full['weights_gib'])} | |")  # fmt: skip
    print("\nThe extrapolated row assumes every block costs what the added one did; with checkpointing the activation"
          " part of the peak is one block's recompute plus each block's saved input, so it grows about linearly.")
    floor = full["weights_gib"] + min(r["peak_gib"] - r["weights_gib"] for r in runs)
    if full["peak_gib"] < floor:  # a per-block peak difference below the weights' own: the fit is noise, not memory
        print(f"The linear peak falls below the full weights plus the smallest measured update ({floor:.2f} GiB): the "
              "update's memory over the weights did not grow with depth here, so read the full-depth peak as about "
              f"{floor:.2f} GiB.")
    return runs + [dict(full, double=full_d, single=full_s, extrapolated=True)]


if __name__ == "__main__":
    main()
