"""The main job on the built-in default (no downloads): SRRL on the toy physics world.

    python -m srrl_core.demo --out output/demo

1. Reflective sampling with the pixel-verifier reward on held-out prompts: each round's candidates, and how
   compliance grows with the number of reflective rounds K.
2. A short SRRL training run (LoRA on the built-in toy model).
3. Compliance on held-out prompts and seeds before and after training, plain sampling (no reflection).
Writes report.html (images, curves, tables) and summary.json into --out and prints where they are.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import time

import torch
from PIL import Image

from .toyworld import sample_prompts
from .toyworld.experiment import evaluate
from .toyworld.verifiers import ToyPhysicsReward
from .training import SRRLTrainer, TrainConfig, build_policy
from .training.curves import render_curves

STEPS = 10  # DDIM steps of every pass: enough for the 32 px toy model, and keeps the job to minutes on 2 cores
SCALE = 4.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/demo", help="folder for report.html and summary.json")
    parser.add_argument("--stages", type=int, default=12, help="SRRL training stages")
    parser.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts for compliance")
    parser.add_argument("--eval-seeds", type=int, default=3, help="seeds per held-out prompt")
    parser.add_argument("--max-rounds", type=int, default=3, help="largest K shown in the reflection part")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    started = time.perf_counter()

    policy = build_policy("toy", STEPS)
    heldout = sample_prompts("heldout", args.eval_prompts, seed=1)
    seeds = list(range(1000, 1000 + args.eval_seeds))

    print(f"[demo] 1/3 reflective sampling, K = 0..{args.max_rounds}, 2 branches, verifier reward")
    reflection = {k: evaluate(policy, heldout, seeds, rounds=k, branches=2, scale=SCALE, strength=0.6)
                  for k in range(args.max_rounds + 1)}  # fmt: skip
    before = evaluate(policy, heldout, seeds, scale=SCALE)

    print(f"[demo] 2/3 SRRL training, {args.stages} stages")
    config = TrainConfig(
        steps=STEPS, stages=args.stages, prompts_per_stage=6, split_time=3, split_step_stride=2, rounds_every=2,
        max_rounds=1, rollout_scale=SCALE, learning_rate=3e-4, trajectories_per_update=12, micro_batch_size=16,
        output_dir=os.path.join(args.out, "run"), lora_name="toyworld_srrl", tensorboard=False, resume=False,
    )  # fmt: skip
    trainer = SRRLTrainer(policy, ToyPhysicsReward(), sample_prompts("train", 64, seed=0), config)
    summary = trainer.train()

    print("[demo] 3/3 compliance after training")
    after = evaluate(policy, heldout, seeds, scale=SCALE)
    seconds = time.perf_counter() - started
    report = write_report(args.out, heldout, reflection, before, after, trainer.history, summary, seconds)
    print(f"[demo] compliance before {before.rate:.3f} -> after {after.rate:.3f}; "
          f"with K={args.max_rounds} reflective rounds {reflection[args.max_rounds].rate:.3f}")  # fmt: skip
    print(f"[demo] report: {os.path.abspath(report)}")
    return 0


def png_data_url(images: torch.Tensor, columns: int, scale: int = 3) -> str:
    """A grid of [N, H, W, 3] images as an inline PNG."""
    n, h, w, _ = images.shape
    rows = (n + columns - 1) // columns
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        tile = Image.fromarray((image.clamp(0, 1).numpy() * 255).round().astype("uint8"))
        grid.paste(tile, ((i % columns) * w, (i // columns) * h))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_report(out, prompts, reflection, before, after, history, summary, seconds) -> str:
    seeds = before.compliant.numel() // len(prompts)
    last = max(reflection)
    rows = "".join(
        f"<tr><td>K = {k}</td><td>{e.rate:.3f}</td><td>[{e.interval()[0]:.2f}, {e.interval()[1]:.2f}]</td><td>{e.model_calls}</td></tr>"
        for k, e in reflection.items()
    )
    # One row per held-out prompt (first seed): every pass's 2 candidates, then the chosen image.
    chain = reflection[last]
    first_batch = chain.round_images[0]
    passes = first_batch.shape[0] // (min(32, len(prompts) * seeds) * 2)
    strips = []
    for p, prompt in enumerate(prompts[:6]):
        index = p * seeds
        if index >= min(32, len(prompts) * seeds):
            break
        tiles = [first_batch[k * first_batch.shape[0] // passes + index * 2 + g] for k in range(passes) for g in range(2)]
        strips.append(f"<p>{html.escape(prompt)}</p><img src='{png_data_url(torch.stack(tiles + [chain.images[index]]), len(tiles) + 1)}'>")
    curves = render_curves(history)
    data = {
        "compliance_before": before.rate, "compliance_after": after.rate,
        "compliance_before_ci": before.interval(), "compliance_after_ci": after.interval(),
        "reflection": {k: {"compliance": e.rate, "ci": e.interval(), "model_calls": e.model_calls} for k, e in reflection.items()},
        "training": {k: v for k, v in summary.items() if isinstance(v, (int, float, str, type(None)))},
        "history": history, "seconds": seconds, "heldout_prompts": list(prompts), "seeds_per_prompt": seeds,
    }  # fmt: skip
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>SRRL on the toy physics world</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd}}img{{image-rendering:pixelated}}</style></head><body>
<h1>SRRL on the toy physics world</h1>
<p>Built-in tiny text-to-image model, pixel verifiers as reward; {len(prompts)} held-out prompts x {seeds} seeds; {seconds:.0f} s in all.</p>
<h2>1. Reflective sampling</h2>
<table><tr><th>rounds</th><th>compliance</th><th>95% CI</th><th>model calls</th></tr>{rows}</table>
<p>Chain of thought with K = {last} (each pass: 2 candidates; last tile: the chosen image):</p>{''.join(strips)}
<h2>2. SRRL training</h2>
<p>{summary['stages_run']} stages, {summary['optimizer_steps']} updates, {summary['kept_trajectories']} kept trajectories, {summary['model_calls']} model calls, {summary['seconds']:.0f} s.</p>
<img src="{png_data_url(torch.from_numpy(curves)[None], 1, 1)}">
<h2>3. Compliance, plain sampling</h2>
<table><tr><th></th><th>compliance</th><th>95% CI</th></tr>
<tr><td>base model</td><td>{before.rate:.3f}</td><td>[{before.interval()[0]:.2f}, {before.interval()[1]:.2f}]</td></tr>
<tr><td>after SRRL</td><td>{after.rate:.3f}</td><td>[{after.interval()[0]:.2f}, {after.interval()[1]:.2f}]</td></tr></table>
<p>Before / after on the same prompts and seeds:</p>
<img src="{png_data_url(before.images[:24], 12)}"><br><img src="{png_data_url(after.images[:24], 12)}">
</body></html>"""
    path = os.path.join(out, "report.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
