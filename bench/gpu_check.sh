#!/usr/bin/env bash
# The project's GPU checks in one run (for a lent GPU machine; about 4 minutes on an H200, machine start not counted):
#   1. engine overhead on the SD1.5-shaped UNet (fp16, 512 px): reflective rounds vs the same UNet calls in a loop
#   2. SRRL's PPO update on SD1.5 at 512 px: peak VRAM with gradient checkpointing, samples per second
#   3. a LoRA update on a full-width Flux-shaped transformer (1024 px tokens, a few blocks): peak VRAM per block,
#      extrapolated to Flux.1's 19 + 38 blocks (with and without gradient checkpointing)
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (wheels for packages missing there in .whl/, see docs/performance.md)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results}}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'
    echo "## Engine overhead (reflective sampling / plain UNet loop)"
    python3 bench/bench_engine.py --model sd15 --dtype fp16 --size 64 --rounds 2 --branches 2 --steps 20 --repeats 3
    python3 bench/bench_engine.py --model sd15 --dtype fp16 --size 64 --rounds 2 --branches 2 --steps 20 --strength 0.5 --repeats 3 | tail -1
    python3 bench/bench_engine.py --model tiny --size 16 --rounds 3 --branches 2 --steps 20 --repeats 3 | tail -1
    echo "## PPO update, SD1.5 at 512 px"
    python3 bench/gpu_sd15_training.py --quick
    echo "## LoRA update, Flux-shaped transformer at full width, 1024 px tokens (peak VRAM, extrapolated to full depth)"
    # the update's kernels (srrl_core.training.ppo.update_attention: cuDNN's SDPA left out on CUDA), then torch's own
    # choice once more: its cuDNN backward hit an illegal memory access on an H200 with torch 2.11 (docs/performance.md)
    python3 bench/gpu_flux_memory.py
    python3 bench/gpu_flux_memory.py --no-checkpointing
    python3 bench/gpu_flux_memory.py --attention torch 2>&1 | tail -3 || true
} 2>&1 | tee "$out/gpu_check.md"
