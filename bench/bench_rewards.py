"""Throughput of the reward backends on this machine, and what batching and model caching buy.

For each backend that runs locally, on a batch of ``--batch`` images of ``--size`` x ``--size`` pixels:
- batched:        one ``score`` call for the whole batch (model loaded once, cached),
- one at a time:  ``--batch`` calls of one image each (model cached),
- reload/call:    one batched call, but the model cache is cleared and the reward rebuilt before it
                  (what reloading the reward model every stage, as the SRRL reference code does, costs).
Figures are images per second (median of ``--repeats``); "load s" is one cold load. Models are small random
stand-ins written in the real formats (tests/helpers/rewards/builders.py): ViT width 256, 4 layers, 224 px
input, patch 32 for the CLIP-like backends; real RapidOCR models for OCR. The VLM judge row talks to the
local rule-based test server, so it measures the client (PNG encoding, HTTP, parsing), not a VLM.
Run: ``python bench/bench_rewards.py [--batch 8 --size 512 --repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srrl_core.rewards import clear_model_cache, load_reward  # noqa: E402
from tests.helpers.rewards import builders  # noqa: E402
from tests.helpers.rewards.judge_server import JudgeServer  # noqa: E402

SIZE = dict(width=256, layers=4, image_size=224, patch_size=32, embed_dim=128)


def backends(folder: str, judge_url: str) -> dict[str, dict]:
    """Options for load_reward per backend, with model files written under ``folder``."""
    checkpoint, config = builders.openclip_checkpoint(folder, **SIZE)
    hps, _ = builders.openclip_checkpoint(folder, hpsv2_format=True, **SIZE)
    hf = builders.hf_clip_folder(os.path.join(folder, "hf"), **SIZE)
    head = builders.aesthetic_head(os.path.join(folder, "head.safetensors"), SIZE["embed_dim"])
    imagereward = builders.imagereward_checkpoint(os.path.join(folder, "ImageReward.pt"), vision_width=256,
                                                  text_width=256, layers=4, image_size=224, patch_size=32)
    vocab = builders.bert_vocab(os.path.join(folder, "bert"))
    cpu = {"device": "cpu"}
    return {
        "clip_openclip": {"checkpoint": checkpoint, "config_file": config, **cpu},
        "clip_hf": {"folder": hf, **cpu},
        "pickscore": {"folder": hf, **cpu},
        "hpsv2": {"checkpoint": hps, "config_file": config, **cpu},
        "aesthetic": {"head": head, "clip": hf, **cpu},
        "imagereward": {"checkpoint": imagereward, "tokenizer": vocab, **cpu},
        "ocr": {},
        "vlm_judge": {"endpoint": judge_url, "model": "rule-judge", "rule": "the top is brighter", "concurrency": 4},
        "colour_presence": {"colour": "255,0,0"},
        "brightness_band": {},
        "horizon_level": {},
        "object_count": {"colour": "255,0,0", "count": 2},
        "symmetry": {},
    }


def rate(fn, images: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return images / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="backends to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (bench/run_all.py --quick); explicit flags still win")
    args = parser.parse_args()
    if args.quick:  # re-parse so that only the defaults change
        parser.set_defaults(batch=2, size=64, repeats=1)
        args = parser.parse_args()

    images = torch.rand(args.batch, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    prompts = ['a sign that says "OPEN"'] * args.batch
    server = JudgeServer()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}; batch {args.batch} x {args.size}x{args.size}\n")
    print("| backend | load s | batched img/s | one at a time img/s | reload/call img/s |")
    print("|---|---:|---:|---:|---:|")
    try:
        with tempfile.TemporaryDirectory() as folder:
            for name, options in backends(folder, server.url).items():
                if args.only and name not in args.only:
                    continue
                clear_model_cache()
                start = time.perf_counter()
                reward = load_reward(name, **options)
                load = time.perf_counter() - start
                reward.score(images[:1], prompts[:1])  # warm-up
                batched = rate(lambda: reward.score(images, prompts), args.batch, args.repeats)
                single = rate(lambda: [reward.score(images[i:i + 1], prompts[i]) for i in range(args.batch)],
                              args.batch, args.repeats)

                def reload():
                    clear_model_cache()
                    load_reward(name, **options).score(images, prompts)

                reloaded = rate(reload, args.batch, args.repeats)
                print(f"| {name} | {load:.2f} | {batched:.1f} | {single:.1f} | {reloaded:.1f} |", flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    main()
