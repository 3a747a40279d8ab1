"""Train the toy base model on procedurally generated physics scenes (CPU-friendly).

    python -m srrl_core.toyworld.train_base --out DIR --minutes 25 --seed 0 --violation-rate 0.4

Data: an endless stream of training-split scenes (``scenes.sample_scene``), each rule violated with
probability ``--violation-rate``, so the model learns to follow physics only partly. Loss: the standard
epsilon-prediction denoising loss (min-SNR-5 weighted), AdamW, warmup then cosine decay, an EMA of the
weights (the EMA is what is saved), classifier-free-guidance dropout (``--cfg-dropout`` of the prompts
become the empty prompt). The UNet and the tiny text encoder are trained jointly; the saved text encoder
is then frozen.

Budget: ``--steps`` fixes the number of optimiser steps (reproducible); with ``--minutes`` alone the
step count is fixed after timing the first steps, so the schedule and the result are deterministic
for that step count (re-run with ``--steps`` to reproduce). At the end the EMA model is sampled (plain
diffusers DDIM, ``--eval-steps`` steps, CFG ``--eval-cfg``) on held-out and training-split prompts with
fixed seeds and judged by the pixel verifiers; the numbers go into ``training.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import scenes as S
from .model import (SCHEDULER_CONFIG, ToyModel, images_to_model, load_toy_model, measure_compliance, new_toy_model,
                    save_toy_model, unet_config_of, with_pooled_text)
from .text_encoder import TEXT_ENCODER_CONFIG, encode_tokens, tokenize

EVAL_SEED = 1234  # initial-noise seeds for the recorded measurements: EVAL_SEED + i
EVAL_PROMPT_SEED = 777  # prompt seeds for the recorded measurements


def batch_stream(seed: int, batch_size: int, violation_rate: float, size: int = 32,
                 family_weights: dict[str, float] | None = None):
    """Endless (images [B, 3, H, W] in [-1, 1], prompts) batches of training-split scenes.

    ``family_weights`` (family -> relative weight) skews the family mix; None draws families uniformly.
    """
    rng = np.random.default_rng(seed)
    probs = None
    if family_weights is not None:
        weights = np.array([family_weights.get(f, 0.0) for f in S.FAMILIES], dtype=float)
        probs = weights / weights.sum()
    while True:
        families = [None] * batch_size if probs is None else list(rng.choice(S.FAMILIES, size=batch_size, p=probs))
        scenes = [S.sample_scene(rng, f, "train", None, violation_rate) for f in families]
        yield images_to_model(S.render_batch(scenes, size)), [s.prompt for s in scenes]


def parse_family_weights(text: str | None) -> dict[str, float] | None:
    """``"balance=1,shadow=2,water=1.5"`` -> {family: weight}; None or "" -> None (uniform)."""
    if not text:
        return None
    weights = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in S.FAMILIES:
            raise ValueError(f"family_weights: unknown family {name!r}; valid: {', '.join(S.FAMILIES)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"family_weights: weight of {name!r} must be a number >= 0, got {value!r}") from None
        if not weights[name] >= 0:
            raise ValueError(f"family_weights: weight of {name!r} must be a number >= 0, got {value!r}")
    if sum(weights.values()) <= 0:
        raise ValueError("family_weights: at least one weight must be > 0")
    return weights


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


DEFAULT_STEPS = 2400


def train(out: str | Path, *, steps: int | None = DEFAULT_STEPS, minutes: float | None = None, seed: int = 0,
          violation_rate: float = 0.4, batch_size: int = 32, lr: float = 1e-3, text_lr: float | None = None,
          warmup: int = 100, ema_decay: float = 0.995, cfg_dropout: float = 0.1, min_snr_gamma: float = 5.0,
          eval_n: int = 96, eval_steps: int = 20, eval_cfg: float = 4.0, device: str = "cpu", log_every: int = 25,
          threads: int | None = 1, init_from: str | Path | None = None,
          family_weights: dict[str, float] | None = None, add_pooled_text: bool = False) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    prior: dict = {}
    if init_from is not None:
        # Continue from saved (EMA, fp16) weights with a fresh optimiser and schedule: the data stream is
        # endless, so a continuation is more training on new scenes, not a repeat of the old ones.
        model = load_toy_model(weights_dir=init_from)
        if add_pooled_text:
            model = with_pooled_text(model, seed)
        model.unet.requires_grad_(True)
        model.text_encoder.requires_grad_(True)
        prior = model.info.get("recipe", {})
    elif add_pooled_text:
        raise ValueError("add_pooled_text grows the pooled-text embedding onto saved weights: it needs init_from "
                         "(a new model has the embedding already)")
    else:
        model = new_toy_model(seed)
    unet, text_encoder = model.unet.to(device).train(), model.text_encoder.to(device).train()
    ema = {name: copy.deepcopy(m).requires_grad_(False).eval() for name, m in (("unet", unet), ("text_encoder", text_encoder))}
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    abar = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    snr = abar / (1 - abar)
    loss_weight = torch.clamp(snr, max=min_snr_gamma) / snr if min_snr_gamma > 0 else torch.ones_like(snr)
    params = [{"params": list(unet.parameters()), "lr": lr},
              {"params": list(text_encoder.parameters()), "lr": text_lr if text_lr is not None else lr}]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    peaks = [g["lr"] for g in opt.param_groups]
    data = batch_stream(seed + 100, batch_size, violation_rate, family_weights=family_weights)
    gen = torch.Generator().manual_seed(seed + 200)
    if steps is None and minutes is None:
        raise ValueError("steps or minutes must be given (steps >= 1, or minutes > 0)")
    total = steps if steps is not None else 10 ** 9
    t_start, cpu_start = time.time(), time.process_time()
    losses: list[float] = []
    history = []
    step = 0
    while step < total:
        images, prompts = next(data)
        drop = torch.rand(len(prompts), generator=gen) < cfg_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        tokens = tokenize(prompts)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(prompts),), generator=gen)
        noise = torch.randn(images.shape, generator=gen)
        images, noise, t = images.to(device), noise.to(device), t.to(device)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * images + (1 - a).sqrt() * noise
        for g, peak in zip(opt.param_groups, peaks):
            g["lr"] = _lr_at(step, total, peak, warmup)
        states = encode_tokens(text_encoder, tokens)
        pred = unet(noisy, t, encoder_hidden_states=states).sample
        per = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per * loss_weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, live in (("unet", unet), ("text_encoder", text_encoder)):
                for pe, pl in zip(ema[name].parameters(), live.parameters()):
                    pe.lerp_(pl.detach(), 1 - decay)
        losses.append(float(per.detach().mean()))
        step += 1
        elapsed = time.time() - t_start
        if minutes is not None and step == 20:
            # Fix the step count from the measured speed so the schedule (and the result) is deterministic
            # for that count: re-run with --steps to reproduce.
            per_step = elapsed / step
            budget = max(step + 1, int(minutes * 60 / per_step))
            total = min(total, budget)
            print(f"[train_base] {per_step:.2f} s/step -> {total} steps (budget {minutes} min)", flush=True)
        if step % log_every == 0 or step == total:
            mean = float(np.mean(losses[-log_every:]))
            history.append({"step": step, "loss": round(mean, 5), "seconds": round(elapsed, 1)})
            print(f"[train_base] step {step}/{total} loss {mean:.4f} lr {opt.param_groups[0]['lr']:.2e} {elapsed / 60:.1f} min", flush=True)
    train_seconds, cpu_seconds = time.time() - t_start, time.process_time() - cpu_start
    final = ToyModel(ema["unet"].to("cpu").float(), ema["text_encoder"].to("cpu").float(), tokenize, dict(SCHEDULER_CONFIG))
    final.unet.requires_grad_(False).eval()
    final.text_encoder.requires_grad_(False).eval()
    info = {
        "recipe": {
            "seed": seed, "steps": step, "batch_size": batch_size, "lr": lr, "text_lr": text_lr if text_lr is not None else lr,
            "warmup": warmup, "schedule": "linear warmup then cosine to 10%", "optimizer": "AdamW(betas=(0.9, 0.99), wd=0.01)",
            "grad_clip": 1.0, "ema_decay": ema_decay, "cfg_dropout": cfg_dropout, "min_snr_gamma": min_snr_gamma,
            "violation_rate": violation_rate,
            "data": "endless training-split scenes, 32x32, families "
                    + ("uniform" if family_weights is None else json.dumps(family_weights)),
            "loss": "epsilon MSE, min-SNR weighted", "saved": "EMA weights, fp16",
            **({"pooled_text_added": True} if add_pooled_text else {}),
            **({"continued_from": prior} if init_from is not None else {}),
        },
        "total_steps": step + _total_steps(prior),
        "unet_config": unet_config_of(final), "text_encoder_config": TEXT_ENCODER_CONFIG, "scheduler_config": SCHEDULER_CONFIG,
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1), "threads": threads, "device": device,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "loss_history": history,
    }
    out = Path(out)
    save_toy_model(final, out, info)
    if eval_n > 0:
        reloaded = load_toy_model(weights_dir=out)  # measure what ships: fp16 weights loaded into fp32
        info["base_compliance"] = evaluate(reloaded, n=eval_n, steps=eval_steps, cfg=eval_cfg)
        info["test_reference"] = reference_measurement(reloaded)
        (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _total_steps(recipe: dict) -> int:
    """Optimiser steps behind a saved recipe, following its chain of continuations."""
    if not recipe:
        return 0
    return int(recipe.get("steps", 0)) + _total_steps(recipe.get("continued_from", {}))


def evaluate(model: ToyModel, *, n: int = 96, steps: int = 20, cfg: float = 4.0) -> dict:
    """Compliance on fixed held-out and training-split prompts, initial noise seeds EVAL_SEED + i."""
    results = {}
    for split in ("heldout", "train"):
        prompts = S.sample_prompts(split, n, EVAL_PROMPT_SEED)
        t0 = time.time()
        r = measure_compliance(model, prompts, seed=EVAL_SEED, steps=steps, cfg=cfg)
        r.pop("compliant")
        r["seconds"] = round(time.time() - t0, 1)
        results[split] = r
        print(f"[train_base] {split}: {json.dumps(r)}", flush=True)
    results["settings"] = {
        "sampler": "diffusers DDIMScheduler (eta 0), scheduler_config.json", "steps": steps, "cfg": cfg,
        "negative": "empty prompt", "dtype": "float32 (fp16 weights upcast)",
        "prompts": f"sample_prompts(split, {n}, seed={EVAL_PROMPT_SEED})",
        "noise": f"torch.Generator().manual_seed({EVAL_SEED} + i), randn(3, 32, 32) per image",
    }
    return results


REFERENCE = dict(split="heldout", n=16, prompt_seed=4242, seed=EVAL_SEED, steps=10, cfg=4.0)


def reference_measurement(model: ToyModel) -> dict:
    """The cheap, fixed measurement that tests/toyworld/test_toyworld.py repeats against the shipped weights."""
    prompts = S.sample_prompts(REFERENCE["split"], REFERENCE["n"], REFERENCE["prompt_seed"])
    r = measure_compliance(model, prompts, seed=REFERENCE["seed"], steps=REFERENCE["steps"], cfg=REFERENCE["cfg"])
    return {"settings": dict(REFERENCE), "compliance": r["compliance"], "score": r["score"], "compliant": r["compliant"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder for the weights and training.json")
    parser.add_argument("--minutes", type=float, default=None,
                        help="time budget: the step count is fixed from the speed of the first 20 steps (capped by --steps)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"number of optimiser steps (default {DEFAULT_STEPS} when --minutes is not given)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--violation-rate", type=float, default=0.4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--text-lr", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--cfg-dropout", type=float, default=0.1)
    parser.add_argument("--min-snr-gamma", type=float, default=5.0)
    parser.add_argument("--eval-n", type=int, default=96, help="prompts per split for the final measurement (0: skip)")
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--eval-cfg", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--init-from", default=None,
                        help="continue from the weights in this folder (e.g. srrl_core/toyworld/weights) instead of a random init")
    parser.add_argument("--family-weights", default=None,
                        help='relative weight of each family in the data, e.g. "balance=1,shadow=2,water=1.5" (default uniform)')
    parser.add_argument("--add-pooled-text", action="store_true",
                        help="with --init-from weights saved without it: grow the pooled-text embedding (zero-gated, "
                             "so training starts from the same model) before continuing")
    args = parser.parse_args(argv)
    family_weights = parse_family_weights(args.family_weights)
    steps = args.steps if args.steps is not None else (None if args.minutes is not None else DEFAULT_STEPS)
    train(args.out, steps=steps, minutes=args.minutes, seed=args.seed,
          violation_rate=args.violation_rate, batch_size=args.batch_size, lr=args.lr, text_lr=args.text_lr,
          warmup=args.warmup, ema_decay=args.ema_decay, cfg_dropout=args.cfg_dropout, min_snr_gamma=args.min_snr_gamma,
          eval_n=args.eval_n, eval_steps=args.eval_steps, eval_cfg=args.eval_cfg, device=args.device,
          threads=args.threads or None, log_every=args.log_every, init_from=args.init_from,
          family_weights=family_weights, add_pooled_text=args.add_pooled_text)


if __name__ == "__main__":
    main()
