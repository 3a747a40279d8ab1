"""Reward backends at their real architecture sizes: load time, batching, memory, and the cost of reloading.

Each model backend is built at the size of the model it stands for, with random weights (no downloads: open_clip's
bundled model configs, transformers configs written here, ImageReward's key layout from
tests/helpers/rewards/builders.py), written to disk in the release format and then loaded through ``load_reward``
exactly as a user's files are. Per backend, in a fresh process of its own (so that peak memory is the backend's):

- build s:        random initialisation + writing the files (a cost of this benchmark, not of users),
- load s:         one cold ``load_reward`` from those files (files in the page cache, model cache cleared),
- batched img/s:  ``--images`` images scored in calls of ``--batch``,
- one img/s:      the same images scored one per call (the ratio batched / one is what batching buys); both modes
                  score each chunk of ``--batch`` images back to back, and the rates are per second of this
                  thread's CPU time at one thread (wall-clock rates, which another process on the core stretches,
                  in brackets; with more threads both are wall-clock),
- GFLOP / image:  the arithmetic of scoring one image (torch's FLOP counter), and the rates it implies; the header
                  gives this core's fp32 matmul rate, the roof: a model already near it at batch 1 cannot gain much
                  from batching on this machine,
- peak RSS MiB:   the measuring process's peak resident memory (after imports: the "imports" column),
- reload s:       what the SRRL reference code pays by rebuilding its reward model every stage: load s x ``--stages``.

The prompts cycle over two strings and are scored once before timing, so CLIP-family backends serve text from their
per-prompt cache (as in a rollout, where every branch of a prompt shares it) and the rates are the image path;
ImageReward encodes its text per image by design (cross-attention to the image). Torch runs ``--threads`` threads
(default 1). ``--quick`` builds the tiny stand-ins of bench_rewards.py instead (seconds; bench/run_all.py).

Run: ``python bench/bench_rewards_width.py [--images 16 --batch 8 --threads 1 --only clip_openclip_L ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# transformers CLIPConfig arguments of the released models (openai/clip-vit-large-patch14,
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K; PickScore_v1 is the latter's architecture).
HF_CLIP = {
    "ViT-L-14": dict(text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                     vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
                     projection_dim=768, act="quick_gelu"),
    "ViT-H-14": dict(text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
                     vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16),
                     projection_dim=1024, act="gelu"),
}
# ImageReward: BLIP ViT-L/16 at 224 px (24 layers, width 1024) + BERT-base text encoder (12 layers, width 768,
# vocabulary 30524, 512 positions) with cross-attention to the image tokens.
IMAGEREWARD = dict(vision_width=1024, vision_layers=24, text_width=768, text_layers=12, image_size=224, patch_size=16,
                   vocab_size=30524, positions=512)
TINY = dict(width=256, layers=4, image_size=224, patch_size=32, embed_dim=128)  # bench_rewards.py's stand-ins

# label -> (backend, architecture); "tiny" rows are the --quick stand-ins.
ROWS = {
    "clip_openclip_L": ("clip_openclip", "ViT-L-14"),
    "clip_openclip_H": ("clip_openclip", "ViT-H-14"),  # the SRRL reference code's reward model
    "clip_hf_L": ("clip_hf", "ViT-L-14"),
    "pickscore_L": ("pickscore", "ViT-L-14"),
    "hpsv2_L": ("hpsv2", "ViT-L-14"),
    "aesthetic_L": ("aesthetic", "ViT-L-14"),
    "imagereward": ("imagereward", "BLIP-L"),
}
EXTRA_ROWS = {"pickscore_H": ("pickscore", "ViT-H-14"), "hpsv2_H": ("hpsv2", "ViT-H-14")}  # the releases' real size
QUICK_ROWS = {f"{backend}_tiny": (backend, "tiny") for backend in ("clip_openclip", "clip_hf", "pickscore", "hpsv2",
                                                                    "aesthetic", "imagereward")}
QUICK_DEFAULT = ["hpsv2_tiny", "aesthetic_tiny", "imagereward_tiny"]  # every builder and loader kind, under a minute


# ---------------------------------------------------------------- building the files (a child process per row)

def _builders():
    """The reward-model builders shared with the tests."""
    from tests.helpers.rewards import builders

    return builders


def _save_safetensors(state: dict, path: str) -> str:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, path)
    return path


def build_openclip(folder: str, arch: str, hpsv2_format: bool) -> dict:
    import open_clip
    import torch

    builders = _builders()

    if arch == "tiny":
        checkpoint, config = builders.openclip_checkpoint(folder, hpsv2_format=hpsv2_format, **TINY)
        return {"checkpoint": checkpoint, "config_file": config}
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    state = model.state_dict()
    if hpsv2_format:  # HPSv2's release: {"state_dict": {"module.*": ...}} in a .pt
        path = os.path.join(folder, "HPS_v2_compressed.pt")
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    else:
        path = _save_safetensors(state, os.path.join(folder, "open_clip_model.safetensors"))
    return {"checkpoint": path, "model_name": arch}


def build_hf_clip(folder: str, arch: str) -> str:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    builders = _builders()

    if arch == "tiny":
        return builders.hf_clip_folder(folder, **TINY)
    spec = HF_CLIP[arch]
    config = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, hidden_act=spec["act"], **spec["text"]),
                        vision_config=dict(image_size=224, patch_size=14, hidden_act=spec["act"], **spec["vision"]),
                        projection_dim=spec["projection_dim"])
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    builders.clip_tokenizer_files(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def build_aesthetic_head(path: str, in_features: int) -> str:
    """The improved-aesthetic-predictor head at its real widths (768 -> 1024 -> 128 -> 64 -> 16 -> 1)."""
    import torch

    g = torch.Generator().manual_seed(0)
    widths, state = [in_features, 1024, 128, 64, 16, 1], {}
    for index, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        state[f"layers.{index}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in**0.5
        state[f"layers.{index}.bias"] = torch.zeros(n_out)
    return _save_safetensors(state, path)


def build_imagereward(folder: str, arch: str) -> dict:
    import torch

    builders = _builders()

    path = os.path.join(folder, "ImageReward.pt")
    vocab = builders.bert_vocab(os.path.join(folder, "bert"))
    if arch == "tiny":
        builders.imagereward_checkpoint(path, vision_width=256, text_width=256, layers=4, image_size=224, patch_size=32)
        return {"checkpoint": path, "tokenizer": vocab}
    size = IMAGEREWARD
    # The builder gives both towers one depth: build at the vision depth, then keep BERT-base's 12 text layers and
    # give the text encoder its 512 positions.
    builders.imagereward_checkpoint(path, vision_width=size["vision_width"], text_width=size["text_width"],
                                    layers=size["vision_layers"], image_size=size["image_size"],
                                    patch_size=size["patch_size"], vocab_size=size["vocab_size"])
    state = torch.load(path, weights_only=True)
    prefix = "blip.text_encoder.encoder.layer."
    state = {k: v for k, v in state.items()
             if not (k.startswith(prefix) and int(k[len(prefix):].split(".")[0]) >= size["text_layers"])}
    g = torch.Generator().manual_seed(1)
    state["blip.text_encoder.embeddings.position_embeddings.weight"] = torch.randn(size["positions"], size["text_width"], generator=g) * 0.02
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(size["positions"]).unsqueeze(0)
    torch.save(state, path)
    return {"checkpoint": path, "tokenizer": vocab}


def build(backend: str, arch: str, folder: str) -> dict:
    """Write the files of ``backend`` at ``arch`` under ``folder``; return the options for load_reward."""
    cpu = {"device": "cpu"}
    if backend in ("clip_openclip", "hpsv2"):
        return {**build_openclip(folder, arch, hpsv2_format=backend == "hpsv2"), **cpu}
    if backend in ("clip_hf", "pickscore"):
        return {"folder": build_hf_clip(os.path.join(folder, "hf"), arch), **cpu}
    if backend == "aesthetic":
        clip = build_hf_clip(os.path.join(folder, "hf"), arch)
        features = TINY["embed_dim"] if arch == "tiny" else HF_CLIP[arch]["projection_dim"]
        return {"head": build_aesthetic_head(os.path.join(folder, "head.safetensors"), features), "clip": clip, **cpu}
    if backend == "imagereward":
        return {**build_imagereward(folder, arch), **cpu}
    raise ValueError(f"no builder for {backend!r}")


# ---------------------------------------------------------------- measuring (a child process per row)

def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _import_libraries(backend: str) -> None:
    if backend in ("clip_openclip", "hpsv2", "aesthetic"):
        import open_clip  # noqa: F401
    if backend in ("clip_hf", "pickscore", "aesthetic", "imagereward"):
        import transformers

        transformers.CLIPModel, transformers.AutoTokenizer, transformers.BertTokenizer  # noqa: B018 (lazy modules)
        from transformers.models.blip import modeling_blip, modeling_blip_text  # noqa: F401


def measure(backend: str, options: dict, images: int, batch: int, size: int, repeats: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from srrl_core.rewards import clear_model_cache, load_reward

    _import_libraries(backend)  # once per process, not part of a load (the reference reloads within one process)
    imports_rss = peak_rss_mib()
    pictures = torch.rand(images, size, size, 3, generator=torch.Generator().manual_seed(0))
    prompts = [('a sign that says "OPEN"', "a red ball on a blue ramp")[i % 2] for i in range(images)]
    clear_model_cache()
    start = time.perf_counter()
    reward = load_reward(backend, **options)
    load = time.perf_counter() - start
    reward.score(pictures[:2], prompts[:2])  # warm-up; CLIP-family backends now hold both prompts' text features
    # The arithmetic of scoring one image (cached text excluded). nn.MultiheadAttention's fused inference path (open_clip)
    # is invisible to the counter, so it is switched off for this one call.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            reward.score(pictures[:1], prompts[:1])
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)

    single_thread = torch.get_num_threads() == 1  # else this thread's CPU time is not the work: use wall time

    def clocked(fn) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        fn()
        wall = time.perf_counter() - wall
        return wall, time.thread_time() - cpu if single_thread else wall

    # Each chunk of `batch` images is scored both ways back to back (which way first alternates), so a change in the
    # machine's load hits both modes alike; totals over all chunks and repeats, in wall and in this thread's CPU time.
    totals = {"batched": [0.0, 0.0], "one": [0.0, 0.0]}
    chunk = 0
    for _ in range(repeats):
        for first in range(0, images, batch):
            part = slice(first, min(first + batch, images))
            modes = {"batched": lambda part=part: reward.score(pictures[part], prompts[part]),
                     "one": lambda part=part: [reward.score(pictures[i:i + 1], prompts[i:i + 1])
                                               for i in range(part.start, part.stop)]}
            for name in (("batched", "one") if chunk % 2 == 0 else ("one", "batched")):
                wall, cpu = clocked(modes[name])
                totals[name][0] += wall
                totals[name][1] += cpu
            chunk += 1
    scored = images * repeats
    return {"load_s": load, "batched_ips": scored / totals["batched"][0], "one_ips": scored / totals["one"][0],
            "batched_ips_cpu": scored / totals["batched"][1], "one_ips_cpu": scored / totals["one"][1],
            "peak_rss_mib": peak_rss_mib(),
            "imports_rss_mib": imports_rss, "threads": torch.get_num_threads(), "gflop": counter.get_total_flops() / 1e9}


def gemm_gflops() -> float:
    """This core's fp32 matrix-multiply rate at the benchmark's thread count (best of 5; per second of this thread's
    CPU time at one thread, like the rates in the table): the roof for a ViT."""
    import torch

    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * 2048**3 / best / 1e9


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.phase == "gemm":
        print(json.dumps({"gflops": gemm_gflops()}))
        return
    backend, arch = {**ROWS, **EXTRA_ROWS, **QUICK_ROWS}[args.child]
    if args.phase == "build":
        start = time.perf_counter()
        options = build(backend, arch, args.folder)
        print(json.dumps({"options": options, "build_s": time.perf_counter() - start}))
    else:
        options = json.loads(args.options)
        print(json.dumps(measure(backend, options, args.images, args.batch, args.size, args.repeats)))


def run_child(label: str, phase: str, folder: str, args, options: dict | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", label, "--phase", phase, "--folder", folder,
           "--threads", str(args.threads), "--images", str(args.images), "--batch", str(args.batch),
           "--size", str(args.size), "--repeats", str(args.repeats)]
    if options is not None:
        cmd += ["--options", json.dumps(options)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"{label} ({phase}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images scored per mode and repeat")
    parser.add_argument("--batch", type=int, default=8, help="images per score call in the batched mode")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (resized to the model's input)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the images (totals, not medians)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--stages", type=int, default=50, help="stages of the reference loop (reload cost = load s x stages)")
    parser.add_argument("--only", nargs="*", metavar="ROW", help=f"rows to run (default: {' '.join(ROWS)}; also {' '.join(EXTRA_ROWS)})")
    parser.add_argument("--quick", action="store_true", help="tiny stand-ins, seconds (bench/run_all.py --quick); explicit flags still win")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("build", "measure", "gemm"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:  # re-parse so that only the defaults change
        parser.set_defaults(images=2, batch=2, size=64)
        args = parser.parse_args()
    rows = QUICK_ROWS if args.quick else {**ROWS, **EXTRA_ROWS}
    selected = args.only or (QUICK_DEFAULT if args.quick else list(ROWS))
    unknown = [name for name in selected if name not in rows]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; known: {', '.join(rows)}")

    with tempfile.TemporaryDirectory(prefix="srrl-bench-") as folder:
        gemm = run_child("gemm", "gemm", folder, args)["gflops"]
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPU cores, torch threads {args.threads}; fp32 matmul (2048^3) "
          f"{gemm:.0f} GFLOP/s; load average at start {os.getloadavg()[0]:.1f}; {args.images} images of "
          f"{args.size}x{args.size}, batch {args.batch}, {args.repeats} pass(es)\n")
    print(f"| backend | architecture | build s | load s | batched img/s (wall) | one at a time img/s (wall) | batched / one | "
          f"GFLOP / image | GFLOP/s batched / one | peak RSS MiB (imports) | reload every stage: load s x {args.stages} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label in selected:
        backend, arch = rows[label]
        with tempfile.TemporaryDirectory(prefix="srrl-bench-") as folder:
            built = run_child(label, "build", folder, args)
            m = run_child(label, "measure", folder, args, built["options"])
        batched, one = m["batched_ips_cpu"], m["one_ips_cpu"]
        print(f"| {backend} | {arch} | {built['build_s']:.1f} | {m['load_s']:.2f} | {batched:.2f} ({m['batched_ips']:.2f}) | "
              f"{one:.2f} ({m['one_ips']:.2f}) | {batched / one:.2f}x | {m['gflop']:.1f} | "
              f"{m['gflop'] * batched:.0f} / {m['gflop'] * one:.0f} | {m['peak_rss_mib']:.0f} "
              f"({m['imports_rss_mib']:.0f}) | {m['load_s'] * args.stages:.0f} s |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
