"""The main job on the built-in default (no downloads): SRRL on the toy physics world.

    python -m srrl_core.demo --out output/demo [--seed N]

1. Reflective sampling with the pixel-verifier reward on a few held-out prompts: each round's candidates.
2. SRRL training with the recipe of ``configs/toyworld.toml`` (LoRA on the built-in toy model), with the graded
   reward of a fixed probe set (plain sampling, same prompts and noise every stage) after every stage.
3. Compliance on the fixed held-out set -- 96 held-out prompts x 4 noise seeds = 384 pairs, plain sampling --
   before and after training, with Wilson intervals and the exact McNemar test on the paired verdicts; and the
   mirror test: the same pairs counted only when they also pass with left and right swapped in the prompt.

``--seed`` changes every random choice of the run: the training draws (prompts, noise, shuffling, LoRA init) and
the held-out and probe noise. ``--learning-rate 0`` is the control: the same run with updates of size zero.
Writes report.html and summary.json into --out and prints where they are.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import time
from pathlib import Path

import torch
from PIL import Image

from .toyworld.experiment import distinct_prompts, evaluate, heldout_set, mcnemar_exact, mirror_consistent, mirrored, per_family
from .toyworld.verifiers import ToyPhysicsReward
from .train import load_config_file, read_prompts
from .training import SRRLTrainer, TrainConfig, build_policy
from .training.curves import render_curves

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "toyworld.toml"
CURVES = (("probe_reward", "probe-set reward (plain sampling)"), ("reward_mean", "training reward (stage mean)"),
          ("clip_fraction_mean", "clip fraction"), ("approx_kl_mean", "approx KL"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/demo", help="folder for report.html and summary.json")
    parser.add_argument("--seed", type=int, default=0, help="changes every random choice of the run (>= 0)")
    parser.add_argument("--config", default=str(RECIPE), help="the training recipe (TOML or YAML)")
    parser.add_argument("--stages", type=int, help="override the recipe's training stages")
    parser.add_argument("--learning-rate", type=float, help="override the recipe's learning rate (0: the control)")
    parser.add_argument("--eval-prompts", type=int, default=96, help="held-out prompts (x 4 seeds)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    data = load_config_file(args.config)
    training = {**data["training"], "seed": data["training"].get("seed", 300) + args.seed, "resume": False,
                "output_dir": os.path.join(args.out, "run"), "tensorboard": False}  # fmt: skip
    if args.stages is not None:
        training["stages"] = args.stages
    if args.learning_rate is not None:
        training["learning_rate"] = args.learning_rate
    config = TrainConfig.from_dict(training)
    policy = build_policy("toy", config.steps)
    scale = config.rollout_scale
    heldout, seeds = heldout_set(args.eval_prompts, 4, noise_seed=args.seed)
    probe_prompts, probe_seeds = distinct_prompts("heldout", 12, seed=2), [20_000 + 10 * args.seed, 20_001 + 10 * args.seed]

    print(f"[demo] 1/3 reflective sampling on {min(6, len(heldout))} held-out prompts, K = 0..2, 2 branches")
    showcase = heldout[:6]
    reflection = {k: evaluate(policy, showcase, seeds[:1], rounds=k, branches=2, scale=scale,
                              renoise_strength=config.renoise_strength) for k in range(3)}  # fmt: skip

    print(f"[demo] 2/3 compliance before training: {len(heldout)} held-out prompts x {len(seeds)} seeds, plain sampling")
    before = evaluate(policy, heldout, seeds, scale=scale)
    both_before = mirror_consistent(before, evaluate(policy, mirrored(heldout), seeds, scale=scale))
    print(f"[demo]     {before.rate:.3f} (mirror-consistent {both_before.float().mean():.3f})")

    print(f"[demo] 3/3 SRRL training, {config.stages} stages (recipe {args.config})")
    probes: list[dict] = [{"stage": -1, "probe_reward": float(evaluate(policy, probe_prompts, probe_seeds, scale=scale).scores.mean())}]

    def probe(event: str, info: dict) -> None:
        if event == "stage_end":
            with trainer.final_weights():
                reward = float(evaluate(policy, probe_prompts, probe_seeds, scale=scale).scores.mean())
            probes.append({"stage": info["stage"], "probe_reward": reward})
            print(f"[demo]     stage {info['stage']}: probe reward {reward:.3f}, kept {info['metrics']['kept_trajectories']}", flush=True)

    trainer = SRRLTrainer(policy, ToyPhysicsReward(), read_prompts(data, os.path.dirname(os.path.abspath(args.config))),
                          config, callbacks=[probe])  # fmt: skip
    summary = trainer.train()
    with trainer.final_weights():
        after = evaluate(policy, heldout, seeds, scale=scale)
        both_after = mirror_consistent(after, evaluate(policy, mirrored(heldout), seeds, scale=scale))
    gained, lost, p_value = mcnemar_exact(before.compliant, after.compliant)
    mirror_gained, mirror_lost, mirror_p = mcnemar_exact(both_before, both_after)
    seconds = time.perf_counter() - started
    result = {
        "seed": args.seed, "compliance_before": before.rate, "compliance_after": after.rate,
        "compliance_before_ci": before.interval(), "compliance_after_ci": after.interval(),
        "n_pairs": before.compliant.numel(), "gained": gained, "lost": lost, "mcnemar_p": p_value,
        "per_family_before": per_family(before, heldout), "per_family_after": per_family(after, heldout),
        "mirror_consistent_before": float(both_before.float().mean()), "mirror_consistent_after": float(both_after.float().mean()),
        "mirror_gained": mirror_gained, "mirror_lost": mirror_lost, "mirror_mcnemar_p": mirror_p,
        "mirror_per_family_before": per_family(both_before, heldout), "mirror_per_family_after": per_family(both_after, heldout),
        "learning_rate": config.learning_rate, "stages": config.stages,
        "training_sampled_images": sum(h["sampled_images"] for h in trainer.history),
        "training_model_calls": summary["model_calls"], "noop_stages": summary["noop_stages"],
        "probe_curve": probes, "reflection": {k: {"compliance": e.rate, "model_calls": e.model_calls} for k, e in reflection.items()},
        "history": trainer.history, "seconds": seconds, "recipe": config.to_dict(),
    }  # fmt: skip
    report = write_report(args.out, result, reflection, before, after, probes, trainer.history, showcase)
    print(f"[demo] held-out compliance {before.rate:.3f} -> {after.rate:.3f} on {result['n_pairs']} pairs "
          f"({gained} gained, {lost} lost, McNemar p = {p_value:.2g}); mirror-consistent {both_before.float().mean():.3f} -> "
          f"{both_after.float().mean():.3f} ({mirror_gained} gained, {mirror_lost} lost, p = {mirror_p:.2g}); {seconds / 60:.1f} min")  # fmt: skip
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


def write_report(out, result, reflection, before, after, probes, history, showcase) -> str:
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    rows = "".join(f"<tr><td>K = {k}</td><td>{e.rate:.3f}</td><td>{e.model_calls}</td></tr>" for k, e in reflection.items())
    # One row per showcase prompt: every pass's 2 candidates, then the chosen image.
    chain = reflection[max(reflection)]
    candidates = chain.round_images[0]
    passes = candidates.shape[0] // (len(showcase) * 2)
    strips = []
    for p, prompt in enumerate(showcase):
        tiles = [candidates[k * len(showcase) * 2 + p * 2 + g] for k in range(passes) for g in range(2)]
        strips.append(f"<p>{html.escape(prompt)}</p><img src='{png_data_url(torch.stack(tiles + [chain.images[p]]), len(tiles) + 1)}'>")
    merged = [{**h, **next((q for q in probes if q["stage"] == h["stage"]), {})} for h in history]
    curves = render_curves(probes[:1] + merged, CURVES)
    families = "".join(f"<tr><td>{f}</td>" + "".join(f"<td>{result[key][f]:.3f}</td>" for key in ("per_family_before", "per_family_after",
                       "mirror_per_family_before", "mirror_per_family_after")) + "</tr>" for f in result["per_family_before"])  # fmt: skip
    b_low, b_high = result["compliance_before_ci"]
    a_low, a_high = result["compliance_after_ci"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>SRRL on the toy physics world</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd}}img{{image-rendering:pixelated}}</style></head><body>
<h1>SRRL on the toy physics world</h1>
<p>Built-in tiny text-to-image model, pixel verifiers as reward; seed {result['seed']}; {result['seconds']:.0f} s in all.</p>
<h2>1. Reflective sampling (K rounds, 2 branches, best candidate)</h2>
<table><tr><th>rounds</th><th>compliance ({len(showcase)} prompts)</th><th>model calls</th></tr>{rows}</table>
<p>Chain of thought with K = {max(reflection)} (each pass: 2 candidates; last tile: the chosen image):</p>{''.join(strips)}
<h2>2. SRRL training</h2>
<p>{result['stages']} stages at learning rate {result['learning_rate']:g}, {result['training_sampled_images']} sampled images,
{result['training_model_calls']} model calls; stages whose update changed nothing: {result['noop_stages']}.
The probe set is 12 held-out prompts x 2 seeds, sampled plainly after every stage (stage -1: before training).</p>
<img src="{png_data_url(torch.from_numpy(curves)[None], 1, 1)}">
<h2>3. Held-out compliance, plain sampling, {result['n_pairs']} paired samples</h2>
<table><tr><th></th><th>compliance</th><th>95% Wilson CI</th></tr>
<tr><td>base model</td><td>{result['compliance_before']:.3f}</td><td>[{b_low:.3f}, {b_high:.3f}]</td></tr>
<tr><td>after SRRL</td><td>{result['compliance_after']:.3f}</td><td>[{a_low:.3f}, {a_high:.3f}]</td></tr></table>
<p>Paired: {result['gained']} samples gained, {result['lost']} lost; exact McNemar p = {result['mcnemar_p']:.3g}.</p>
<p>Mirror test (a sample counts when it passes under its prompt and, from the same noise, under the prompt with left and
right swapped; a model that draws one side whatever the prompt says gains nothing here):
{result['mirror_consistent_before']:.3f} -&gt; {result['mirror_consistent_after']:.3f}, {result['mirror_gained']} gained,
{result['mirror_lost']} lost, p = {result['mirror_mcnemar_p']:.3g}.</p>
<table><tr><th>family</th><th>before</th><th>after</th><th>mirror-consistent before</th><th>after</th></tr>{families}</table>
<p>Before / after on the same prompts and seeds:</p>
<img src="{png_data_url(before.images[:24], 12)}"><br><img src="{png_data_url(after.images[:24], 12)}">
</body></html>"""
    path = os.path.join(out, "report.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
