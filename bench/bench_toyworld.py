"""Does SRRL improve physical reasoning? Paired held-out compliance on the toy world, with the compute counted.

Every method is judged on one fixed held-out set -- ``--prompts`` distinct held-out prompts x 4 noise seeds per
``--noise-seed`` block, plain eta-0 sampling unless the method samples otherwise -- against the base model on the
same pairs: Wilson 95% intervals, the exact McNemar test on discordant pairs, pooled and per family. The same
measurement on as many training-split prompts (the prompts training draws from) is reported apart, and so is the
mirror test (last column): a held-out sample counts when it passes under its prompt and, from the same noise, under
the prompt's mirror image (left and right swapped), so a policy that draws one side whatever the prompt says gains
nothing there. Compute is counted, not assumed: ``network rows`` are rows the denoiser network evaluated (a CFG step of
one sample is two rows), split into sampling and the updates' forward passes; ``images`` are the images training
sampled (rollout siblings and reflective passes).

Methods:
  base               plain DDIM
  reflect K          reflective sampling, K = 1..3 rounds, one branch, best round by the verifier reward,
                     renoise_strength ``--strength``
  best-of-N          N independent samples, the best by the verifier reward; N = the reflect-K model calls / steps
  SRRL               LoRA trained with configs/toyworld.toml (one run per ``--seeds``), sampled plainly
  SRRL + reflect 1   the same LoRA with one reflective round
  DDPO               the same trainer without reflection or branching: every trajectory independent, all steps,
                     every sample trained with its per-prompt advantage; as many sampled images as SRRL
  DDPO + reflect 1   the DDPO LoRA with one reflective round: does training through reflection help reflection?
  SRRL lr = 0        the control: the SRRL run with learning rate 0 (first seed)

    python bench/bench_toyworld.py [--seeds 0 1 2] [--stages 24] [--prompts 96] [--threads 2] [--quick]
    python bench/bench_toyworld.py --merge A/results.jsonl B/results.jsonl    # runs split over processes
    python bench/bench_toyworld.py --versus a0/results.jsonl:b0/results.jsonl a1/...:b1/...   # two recipes, per seed

Results are appended to ``--out``/results.jsonl as each method finishes and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from srrl_core.demo import RECIPE  # noqa: E402
from srrl_core.toyworld.experiment import (evaluate, heldout_set, mcnemar_exact, mirror_consistent, mirrored,  # noqa: E402
                                           per_family, training_split_set, wilson_interval)
from srrl_core.toyworld.verifiers import ToyPhysicsReward  # noqa: E402
from srrl_core.train import load_config_file, read_prompts  # noqa: E402
from srrl_core.training import SRRLTrainer, TrainConfig, build_policy  # noqa: E402


class CountedPolicy:
    """The toy policy with its denoiser's rows counted: sampling (no grad) and update (grad) apart."""

    def __init__(self, steps: int):
        self.policy = build_policy("toy", steps)
        self.rows = {"sampling": 0, "update": 0}
        denoiser = self.policy.denoiser

        def counted(x, sigma, cond):
            self.rows["update" if torch.is_grad_enabled() else "sampling"] += x.shape[0]
            return denoiser(x, sigma, cond)

        self.policy.denoiser = counted

    def take(self) -> dict:
        rows, self.rows = self.rows, {"sampling": 0, "update": 0}
        return rows


def parse_overrides(items: list[str]) -> dict:
    """``["lora_conv=true", "learning_rate=1e-3"]`` -> {key: TOML value}."""
    import tomllib

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
    return out


def ddpo_config(srrl: TrainConfig, out: str) -> TrainConfig:
    """DDPO in the same trainer at SRRL's sampled-image budget: no reflection, one trajectory per group (no
    branching, so every step from the start is trained), every sample kept with its per-prompt advantage."""
    per_stage = sum(sampled_images(srrl, n) for n in range(srrl.stages)) / srrl.stages
    groups = max(4, round(per_stage / srrl.prompts_per_stage))  # >= 4 samples per prompt for a baseline
    values = {**srrl.to_dict(), "groups_per_prompt": groups, "split_time": 1, "max_rounds": 0, "prompt_draws": 1, "train_every_round": False,
              "split_step_start": srrl.steps - 1, "split_step_stride": 0, "curriculum_period": 1,
              "positive_threshold": -1e9, "negative_threshold": -1e9, "min_reward_gap": 0.0,
              "advantage_min_count": min(groups, srrl.advantage_min_count), "output_dir": out, "lora_name": "ddpo"}  # fmt: skip
    return TrainConfig.from_dict(values)


def sampled_images(config: TrainConfig, stage: int) -> int:
    """Images one training stage samples at one prompt draw (:meth:`TrainConfig.images_per_group` per group)."""
    return config.prompts_per_stage * config.groups_per_prompt * config.images_per_group(stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--stages", type=int, help="override the recipe's stages")
    parser.add_argument("--prompts", type=int, default=96, help="held-out prompts (x 4 noise seeds per block)")
    parser.add_argument("--strength", type=float, default=0.6, help="renoise_strength of reflection at inference")
    parser.add_argument("--methods", nargs="+", default=["base", "reflect", "best_of_n", "srrl", "ddpo", "control"])
    parser.add_argument("--quick", action="store_true", help="seconds-sized smoke run: 6 prompts, 1 seed, 1 stage")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="bench/results/toyworld")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a [training] key of the recipe, the value in TOML (e.g. lora_conv=true); repeatable")
    parser.add_argument("--plain-only", action="store_true", help="skip the '+ reflect K=1' evaluation of trained LoRAs")
    parser.add_argument("--noise-seed", type=int, nargs="+", default=[0],
                        help="held-out noise-seed blocks of 4 seeds each, pooled (0: the documented tables; "
                             "screen recipes on other blocks, several of them: one LoRA moves by up to 0.2 between blocks)")
    parser.add_argument("--eval-eta", type=float, default=0.0,
                        help="DDIM eta of every evaluation pass (0: plain deterministic sampling; 1: the ancestral "
                             "sampling the rollouts train under)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs already under --out from their last checkpoint (a finished run is only "
                             "re-evaluated; its row then counts this process's network rows only)")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS_JSONL",
                        help="no sampling: one table from the results.jsonl of runs that split the methods / seeds "
                             "(same held-out set and base row), written to --out/merged.json")
    parser.add_argument("--versus", nargs="+", metavar="A_JSONL:B_JSONL",
                        help="no sampling: recipe A against recipe B, each pair of runs on one held-out block (their "
                             "last trained rows, or FILE@METHOD), per pair, pooled over the pairs, and between "
                             "training seeds (each pair one seed: t interval and exact sign-flip test)")
    args = parser.parse_args()
    if args.versus:
        print(versus_table([pair.split(":") for pair in args.versus]))
        return
    if args.merge:
        results = merged_results(args.merge)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "merged.json"), "w", encoding="utf-8") as f:
            json.dump({"sources": args.merge, "rows": results}, f, indent=1)
        print(HEADER + "\n" + "\n".join(format_row(r, results[0]["compliance"]) for r in results))
        print(head_to_head(results))
        return
    if args.quick:
        args.prompts, args.seeds, args.stages = 6, args.seeds[:1], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    data = load_config_file(str(RECIPE))
    recipe = {**data["training"], "progress": False, "resume": args.resume, "tensorboard": False}
    if args.stages:
        recipe["stages"] = args.stages
    recipe.update(parse_overrides(args.overrides))
    train_prompts = read_prompts(data, str(RECIPE.parent))
    prompts, seeds = heldout_set(args.prompts, 4, noise_seed=args.noise_seed)
    seen_prompts, _ = training_split_set(args.prompts, 4, noise_seed=args.noise_seed)
    steps, scale = recipe["steps"], recipe["rollout_scale"]
    counted = CountedPolicy(steps)
    results: list[dict] = []

    def measure(policy, **kwargs) -> tuple:
        """(held-out, training-split, mirrored held-out) evaluations of one way of sampling."""
        return tuple(evaluate(policy, p, seeds, scale=scale, eta=args.eval_eta, **kwargs)
                     for p in (prompts, seen_prompts, mirrored(prompts)))

    def record(name: str, evaluations: tuple, base: tuple | None = None, **extra) -> None:
        evaluation, seen, mirror = evaluations
        low, high = evaluation.interval()
        both = mirror_consistent(evaluation, mirror)
        row = {"method": name, "compliance": evaluation.rate, "ci": [low, high], "n": evaluation.compliant.numel(),
               "per_family": per_family(evaluation, prompts), **extra,
               "eval_eta": args.eval_eta, "noise_blocks": args.noise_seed, "verdicts": "".join("1" if c else "0" for c in evaluation.compliant.tolist()),
               "train_split": {"compliance": seen.rate, "ci": list(seen.interval())},
               "mirror": {"compliance": float(both.float().mean()), "ci": list(wilson_interval(int(both.sum()), both.numel())),
                          "per_family": per_family(both, prompts), "verdicts": "".join("1" if c else "0" for c in both.tolist())}}  # fmt: skip
        if base is not None:
            row["gained"], row["lost"], row["mcnemar_p"] = mcnemar_exact(base[0].compliant, evaluation.compliant)
            split = row["train_split"]
            split["gained"], split["lost"], split["mcnemar_p"] = mcnemar_exact(base[1].compliant, seen.compliant)
            pairs = row["mirror"]
            pairs["gained"], pairs["lost"], pairs["mcnemar_p"] = mcnemar_exact(mirror_consistent(base[0], base[2]), both)
        results.append(row)
        with open(os.path.join(args.out, "results.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(format_row(row, results[0]["compliance"]), flush=True)

    def judge(**kwargs):
        counted.take()
        evaluations = measure(counted.policy, **kwargs)
        samples = sum(e.compliant.numel() for e in evaluations)
        return evaluations, counted.take()["sampling"] // (2 * samples)  # a CFG call evaluates two rows

    print(f"held-out: {len(prompts)} prompts x {len(seeds)} seeds = {len(prompts) * len(seeds)} pairs (noise blocks "
          f"{args.noise_seed}), sampled at eta {args.eval_eta:g}; recipe {RECIPE.name}, {recipe['stages']} stages, overrides {args.overrides}; "
          f"training seeds {args.seeds}", flush=True)
    print(HEADER, flush=True)
    base, calls = judge()
    record("base", base, calls_per_sample=calls)
    if "reflect" in args.methods or "best_of_n" in args.methods:
        for k in range(1, 4):
            if "reflect" in args.methods:
                evaluation, calls = judge(rounds=k, renoise_strength=args.strength)
                record(f"reflect K={k}", evaluation, base, calls_per_sample=calls)
            if "best_of_n" in args.methods:
                n = round((steps + 2 * k * round(args.strength * steps)) / steps)
                evaluation, calls = judge(branches=n)
                record(f"best-of-{n}", evaluation, base, calls_per_sample=calls)

    def train(name: str, config: TrainConfig, reflect_after: bool = False) -> None:
        policy = CountedPolicy(steps)
        started = time.perf_counter()
        trainer = SRRLTrainer(policy.policy, ToyPhysicsReward(), train_prompts, config)
        summary = trainer.train()
        cost = policy.take()
        # Checkpoints written before the trainer logged sampled_images (prompt_draws) held one draw per stage.
        images = sum(h.get("sampled_images", sampled_images(config, h["stage"])) for h in trainer.history)
        extra = dict(stages=config.stages, train_images=images, train_sampling_rows=cost["sampling"], train_update_rows=cost["update"],
                     train_seconds=round(time.perf_counter() - started), noop_stages=summary["noop_stages"],
                     resumed_from=summary["resumed_from"])  # fmt: skip
        with trainer.final_weights():
            record(name, measure(policy.policy), base, calls_per_sample=steps, **extra)
            if reflect_after:
                evaluations = measure(policy.policy, rounds=1, renoise_strength=args.strength)
                record(f"{name} + reflect K=1", evaluations, base, calls_per_sample=steps + 2 * round(args.strength * steps), **extra)

    for seed in args.seeds:
        srrl = TrainConfig.from_dict({**recipe, "seed": recipe.get("seed", 300) + seed,
                                      "output_dir": os.path.join(args.out, f"srrl-{seed}")})  # fmt: skip
        if "srrl" in args.methods:
            train(f"SRRL seed {seed}", srrl, reflect_after=not args.plain_only)
        if "ddpo" in args.methods:
            train(f"DDPO seed {seed}", ddpo_config(srrl, os.path.join(args.out, f"ddpo-{seed}")), reflect_after=not args.plain_only)
        if "control" in args.methods and seed == args.seeds[0]:
            control = TrainConfig.from_dict({**srrl.to_dict(), "learning_rate": 0.0, "output_dir": os.path.join(args.out, "control")})
            train(f"SRRL lr=0 seed {seed}", control)
    print("\n" + HEADER + "\n" + "\n".join(format_row(r, results[0]["compliance"]) for r in results))


def read_rows(path: str) -> list[dict]:
    """The rows of one results.jsonl, in the order the methods finished."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def verdicts(row: dict) -> torch.Tensor:
    """[N] bool: the row's per-pair compliance, in the held-out set's order."""
    return torch.tensor([c == "1" for c in row["verdicts"]])


def merged_results(paths: list[str]) -> list[dict]:
    """The rows of several results.jsonl, one base row first: every file must start with the same base row (the
    same held-out pairs), or their paired statistics would not compare."""
    runs = [read_rows(path) for path in paths]
    bases = [rows[0] for rows in runs if rows and rows[0]["method"] == "base"]
    shared = set.intersection(*map(set, bases)) if bases else set()  # runs from before verdicts were kept lack them
    if len(bases) != len(runs) or len({json.dumps({k: b[k] for k in shared}, sort_keys=True) for b in bases}) != 1:
        raise ValueError("--merge: every results.jsonl must start with the same base row (the same held-out pairs)")
    return runs[0][:1] + [row for rows in runs for row in rows[1:]]


def head_to_head(results: list[dict]) -> str:
    """SRRL against DDPO of the same training seed and budget, paired on the held-out pairs (exact McNemar on
    their discordant verdicts); rows from before verdicts were recorded are left out."""
    lines = ["| SRRL row | DDPO row | SRRL / DDPO compliance | SRRL-only / DDPO-only compliant | McNemar p |", "|---|---|---|---|---|"]
    ddpo = {(r["method"].replace("DDPO", "SRRL"), r.get("stages")): r for r in results
            if r["method"].startswith("DDPO") and "verdicts" in r}  # fmt: skip
    for row in results:
        rival = ddpo.get((row["method"], row.get("stages")))
        if rival is None or "verdicts" not in row:
            continue
        srrl_only, ddpo_only, p = mcnemar_exact(verdicts(rival), verdicts(row))
        lines.append(f"| {row['method']} ({row['train_images']} images) | {rival['method']} ({rival['train_images']} images) | "
                     f"{row['compliance']:.3f} / {rival['compliance']:.3f} | {srrl_only} / {ddpo_only} | {p:.2g} |")
    return "\n".join(lines)


def trained_row(spec: str) -> tuple[dict, dict]:
    """(base row, chosen row) of ``FILE`` (its last row other than the base) or ``FILE@METHOD``."""
    path, _, method = spec.partition("@")
    rows = read_rows(path)
    if not rows or rows[0]["method"] != "base" or "verdicts" not in rows[0]:
        raise ValueError(f"--versus: {path} must start with a base row that kept its verdicts")
    chosen = [r for r in rows[1:] if (not method or r["method"] == method) and "verdicts" in r]
    if not chosen:
        raise ValueError(f"--versus: {path} has no row {method or 'besides the base'} with verdicts; rows: "
                         f"{[r['method'] for r in rows]}")
    return rows[0], chosen[-1]


def versus_table(pairs: list[list[str]]) -> str:
    """Recipe A against recipe B, paired on the held-out pairs of each (A run, B run) -- one training seed and
    noise block each -- then pooled over all of them: compliance, each against the base (gained / lost, exact
    McNemar) and A against B (A-only / B-only compliant, exact McNemar on the concatenated verdicts); then the same
    differences with the training seed as the unit (:func:`between_seeds_line`)."""
    lines = ["| A row | B row | base | A | B | A vs base | B vs base | A-only / B-only | McNemar p |",
             "|---|---|---|---|---|---|---|---|---|"]
    pooled: list[list[torch.Tensor]] = [[], [], []]
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"--versus takes A_JSONL:B_JSONL pairs, got {':'.join(pair)!r}")
        (base, a), (base_b, b) = trained_row(pair[0]), trained_row(pair[1])
        if base["verdicts"] != base_b["verdicts"] or base["n"] != base_b["n"]:
            raise ValueError(f"--versus: {pair[0]} and {pair[1]} were not evaluated on the same held-out pairs")
        paired = [verdicts(row) for row in (base, a, b)]
        for pool, v in zip(pooled, paired):
            pool.append(v)
        lines.append(versus_line(a["method"], b["method"], *paired))
    if len(pairs) > 1:
        lines.append(versus_line(f"**pooled ({len(pairs)} pairs)**", "", *(torch.cat(v) for v in pooled)))
        rates = [[float(v.float().mean()) for v in pool] for pool in pooled]  # [base, A, B] x training seed
        lines += ["", BETWEEN_SEEDS_HEADER] + [between_seeds_line(label, [x - y for x, y in zip(rates[i], rates[j])])
                                               for label, i, j in (("A - base", 1, 0), ("B - base", 2, 0), ("A - B", 1, 2))]
    return "\n".join(lines)


BETWEEN_SEEDS_HEADER = ("| between training seeds | per seed | mean | SD | 95% t interval | sign-flip p (exact) | ahead / behind |\n"
                        "|---|---|---|---|---|---|---|")


def between_seeds_line(label: str, differences: list[float]) -> str:
    """One paired difference of compliance with the training seed as the unit: mean, its Student-t 95% interval
    and the exact sign-flip permutation test over the seeds.

    The pooled McNemar test treats every held-out pair as independent; that is exact for the LoRAs that were
    trained, but a recipe's result also varies from one training seed to the next (by more than 0.1 on the toy
    world), and only the seed-to-seed spread says whether another set of seeds would come out the same way."""
    try:
        from scipy import stats
    except ImportError as error:
        raise ImportError("--versus over training seeds needs scipy: pip install -r requirements-dev.txt") from error
    d = np.asarray(differences, dtype=np.float64)
    low, high = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    # Under H0 each seed's difference is as likely negative as positive: all 2^n sign patterns, enumerated.
    p = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    return (f"| {label} ({len(d)} seeds) | {' / '.join(f'{x:+.3f}' for x in d)} | {d.mean():+.3f} | {d.std(ddof=1):.3f} | "
            f"[{low:+.3f}, {high:+.3f}] | {p:.2g} | {int((d > 0).sum())} / {int((d < 0).sum())} |")


def versus_line(a_name: str, b_name: str, base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> str:
    def rate(v: torch.Tensor) -> str:
        low, high = wilson_interval(int(v.sum()), v.numel())
        return f"{float(v.float().mean()):.3f} [{low:.3f}, {high:.3f}]"

    def against(before: torch.Tensor, after: torch.Tensor) -> str:
        gained, lost, p = mcnemar_exact(before, after)
        return f"{gained} / {lost} (p = {p:.2g})"

    a_only, b_only, p = mcnemar_exact(b, a)
    return (f"| {a_name} | {b_name} | {rate(base)} | {rate(a)} | {rate(b)} | {against(base, a)} | {against(base, b)} | "
            f"{a_only} / {b_only} | {p:.2g} |")


HEADER = ("| method | compliance | 95% CI | gained / lost | McNemar p | calls / sample | training images | "
          "gain per 1000 training images | balance / shadow / water | training split (gained / lost) | "
          "mirror-consistent (gained / lost, p) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def paired_cells(row: dict) -> tuple[str, str, str, str]:
    """The cells every toy-world table shares: compliance with its interval, gained / lost, McNemar p, families."""
    low, high = row["ci"]
    paired = f"{row['gained']} / {row['lost']}" if "gained" in row else ""
    p = f"{row['mcnemar_p']:.2g}" if "mcnemar_p" in row else ""
    families = " / ".join(f"{v:.2f}" for v in row["per_family"].values())
    return f"{row['compliance']:.3f} | [{low:.3f}, {high:.3f}]", paired, p, families


def format_row(row: dict, base_rate: float) -> str:
    rate, paired, p, families = paired_cells(row)
    images = row.get("train_images", 0)
    per_1000 = f"{1000 * (row['compliance'] - base_rate) / images:+.4f}" if images else ""
    split = row.get("train_split", {})  # rows from before the training split was measured lack it
    seen = f"{split['compliance']:.3f}" if split else ""
    if "gained" in split:
        seen += f" ({split['gained']} / {split['lost']})"
    pairs = row.get("mirror", {})  # rows from before the mirror test lack it
    both = f"{pairs['compliance']:.3f}" if pairs else ""
    if "gained" in pairs:
        both += f" ({pairs['gained']} / {pairs['lost']}, {pairs['mcnemar_p']:.2g})"
    return (f"| {row['method']} | {rate} | {paired} | {p} | {row['calls_per_sample']} | {images or ''} | {per_1000} | "
            f"{families} | {seen} | {both} |")


if __name__ == "__main__":
    main()
