"""Reflection's price: held-out compliance versus model calls for partial re-noising, against best-of-N.

On the toy world's fixed held-out set (``--prompts`` distinct held-out prompts x 4 noise seeds, the base model,
no training), every method is paired with plain sampling on the same (prompt, seed): Wilson 95% intervals and the
exact McNemar test. Methods:

  reflect s, K           K reflective rounds at ``renoise_strength`` s, one branch; the verifier reward picks the
                         best of the K + 1 passes (K + 1 reward calls per sample)
  re-noise only s, K     the same runs, the last pass taken as it is: the reward judges only the end result and
                         chooses nothing (0 reward calls in the loop). With one branch the reward never steers
                         the trajectory, so this row isolates what re-noising itself does from what choosing does.
  best-of-N              N independent samples, the best by the verifier reward (N reward calls per sample)

Model calls are counted, not assumed: each CFG step of one sample is one call (two network rows). Best-of-N
reuses one run of the largest N: the first N branches of it are exactly an N-branch run (branch g of a sample
always draws from seed * 1000 + g), so every N costs what it says while the benchmark samples it once.

    python bench/bench_reflection.py [--strengths 0.3 0.5 0.7 1.0] [--rounds 1 2 3] [--prompts 96] [--threads 1]

Rows go to ``--out``/results.jsonl as they finish, a markdown table to stdout, and the frontier plot (compliance
versus calls per sample) to ``--out``/frontier.png when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_toyworld import CountedPolicy, merged_results, paired_cells  # noqa: E402

from srrl_core.demo import RECIPE  # noqa: E402
from srrl_core.sampling.reflective import planned_model_calls  # noqa: E402
from srrl_core.toyworld.experiment import evaluate, heldout_set, mcnemar_exact, per_family, wilson_interval  # noqa: E402
from srrl_core.toyworld.verifiers import ToyPhysicsReward, compliance  # noqa: E402
from srrl_core.train import load_config_file  # noqa: E402


def last_pass(evaluation, passes: int) -> torch.Tensor:
    """The last pass's images of a one-branch reflective evaluation, in the evaluation's pair order."""
    chunks = []
    for candidates in evaluation.round_images:  # per batch: [passes * rows, H, W, 3], pass-major
        rows = candidates.shape[0] // passes
        chunks.append(candidates[(passes - 1) * rows :])
    return torch.cat(chunks)


def best_of_first(evaluation, branches: int, n: int, prompts: list[str]) -> torch.Tensor:
    """Images of best-of-``n`` taken from a ``branches``-branch evaluation's candidates (rows pair-major)."""
    reward = ToyPhysicsReward()
    chosen = []
    start = 0
    for candidates in evaluation.round_images:  # one pass: [pairs * branches, H, W, 3]
        pairs = candidates.shape[0] // branches
        grouped = candidates.view(pairs, branches, *candidates.shape[1:])[:, :n]
        row_prompts = [p for p in prompts[start : start + pairs] for _ in range(n)]
        scores = reward(grouped.flatten(0, 1), row_prompts).float().view(pairs, n)
        chosen.append(grouped[torch.arange(pairs), scores.argmax(dim=1)])
        start += pairs
    return torch.cat(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--prompts", type=int, default=96, help="held-out prompts (x 4 noise seeds)")
    parser.add_argument("--quick", action="store_true", help="seconds-sized smoke run: 6 prompts, 1 seed, s in {0.5, 1}, K = 1")
    parser.add_argument("--best-of-max", type=int, default=None,
                        help="largest N of best-of-N (default: the most calls any reflect row uses; 0: no best-of-N rows)")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS_JSONL",
                        help="no sampling: merge results.jsonl files of runs that split the grid (same held-out set and "
                             "base row) into one table and plot under --out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/reflection")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    seeds_per_prompt = 4
    if args.quick:
        args.prompts, args.strengths, args.rounds, seeds_per_prompt = 6, [0.5, 1.0], [1], 1
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    recipe = load_config_file(str(RECIPE))["training"]
    steps, scale = recipe["steps"], recipe["rollout_scale"]
    prompts, seeds = heldout_set(args.prompts, seeds_per_prompt)
    pair_prompts = [p for p in prompts for _ in seeds]
    counted = CountedPolicy(steps)
    results: list[dict] = []
    started = time.perf_counter()

    def record(method: str, compliant: torch.Tensor, calls: int, reward_calls: int, base=None, **extra) -> dict:
        successes, n = int(compliant.sum()), compliant.numel()
        row = {"method": method, "compliance": successes / n, "ci": list(wilson_interval(successes, n)), "n": n,
               "calls_per_sample": calls, "reward_calls_per_sample": reward_calls,
               "per_family": per_family(_Verdicts(compliant), prompts), **extra}  # fmt: skip
        if base is not None:
            row["gained"], row["lost"], row["mcnemar_p"] = mcnemar_exact(base, compliant)
        results.append(row)
        with open(os.path.join(args.out, "results.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(format_row(row, results[0]["compliance"]), flush=True)
        return row

    def judge(**kwargs):
        counted.take()
        evaluation = evaluate(counted.policy, prompts, seeds, scale=scale, **kwargs)
        return evaluation, counted.take()["sampling"] // (2 * evaluation.compliant.numel())

    print(f"held-out: {len(prompts)} prompts x {len(seeds)} seeds = {len(pair_prompts)} pairs; {steps} steps, "
          f"CFG {scale}; {platform.processor() or platform.machine()}, {args.threads} thread(s)", flush=True)
    print(HEADER, flush=True)
    base_eval, calls = judge()
    base = base_eval.compliant
    record("base", base, calls, 0)
    for strength in args.strengths:
        for k in args.rounds:
            evaluation, calls = judge(rounds=k, renoise_strength=strength)
            planned = planned_model_calls(steps, k, strength)
            if calls != planned:
                raise RuntimeError(f"counted {calls} model calls per sample, planned {planned} (s={strength}, K={k})")
            record(f"reflect s={strength} K={k}", evaluation.compliant, calls, k + 1, base, strength=strength, rounds=k)
            only = compliance(last_pass(evaluation, k + 1), pair_prompts).bool()
            record(f"re-noise only s={strength} K={k}", only, calls, 0, base, strength=strength, rounds=k)
    most = max(round(planned_model_calls(steps, k, s) / steps) for s in args.strengths for k in args.rounds)
    most = most if args.best_of_max is None else args.best_of_max
    evaluation, calls = judge(branches=most) if most >= 2 else (None, 0)
    for n in range(2, most + 1):
        chosen = best_of_first(evaluation, most, n, pair_prompts)
        record(f"best-of-{n}", compliance(chosen, pair_prompts).bool(), n * steps, n, base, n=n)
    add_gain_kept(results)
    summary = {"seconds": round(time.perf_counter() - started), "steps": steps, "pairs": len(pair_prompts),
               "machine": platform.processor() or platform.machine(), "threads": args.threads}  # fmt: skip
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({**summary, "rows": results}, f, indent=1)
    print("\n" + HEADER + "\n" + "\n".join(format_row(r, results[0]["compliance"]) for r in results))
    plot(results, os.path.join(args.out, "frontier.png"))


def merge(paths: list[str], out: str) -> None:
    """One table and plot from runs that split the grid: their base rows must agree (the same pairs)."""
    results = merged_results(paths)
    add_gain_kept(results)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "merged.json"), "w", encoding="utf-8") as f:
        json.dump({"sources": paths, "rows": results}, f, indent=1)
    print(HEADER + "\n" + "\n".join(format_row(r, results[0]["compliance"]) for r in results))
    plot(results, os.path.join(out, "frontier.png"))


def add_gain_kept(results: list[dict]) -> None:
    """``gain_kept``: a reflect row's gain over base as a fraction of the full-strength (s = 1) reflect gain at the
    same K (the target: >= 95% of it at <= 60% of the model calls); absent where the full-strength gain is not > 0."""
    base = results[0]["compliance"]
    reflect = [r for r in results if r["method"].startswith("reflect ")]
    full = {r["rounds"]: r["compliance"] - base for r in reflect if r["strength"] == 1.0}
    for r in reflect:
        if full.get(r["rounds"], 0) > 0:
            r["gain_kept"] = (r["compliance"] - base) / full[r["rounds"]]


class _Verdicts:
    """The one attribute :func:`per_family` reads from an evaluation."""

    def __init__(self, compliant: torch.Tensor):
        self.compliant = compliant


HEADER = ("| method | compliance | 95% CI | gained / lost vs base | McNemar p | model calls / sample | "
          "reward calls / sample | gain kept | balance / shadow / water |\n|---|---|---|---|---|---|---|---|---|")


def format_row(row: dict, base_rate: float) -> str:
    rate, paired, p, families = paired_cells(row)
    kept = f"{row['gain_kept']:.0%}" if "gain_kept" in row else ""
    return (f"| {row['method']} | {rate} | {paired} | {p} | {row['calls_per_sample']} | "
            f"{row['reward_calls_per_sample']} | {kept} | {families} |")


def plot(results: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("frontier plot skipped: pip install matplotlib", flush=True)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    base = results[0]
    ax.axhline(base["compliance"], color="grey", lw=0.8, ls=":", label="base (plain sampling)")
    strengths = sorted({r["strength"] for r in results if "strength" in r})
    colours = {s: plt.cm.viridis(i / max(1, len(strengths) - 1) * 0.85) for i, s in enumerate(strengths)}
    for kind, style in (("reflect", "-o"), ("re-noise only", "--x")):
        for s in strengths:
            rows = sorted((r for r in results if r["method"].startswith(kind + " ") and r["strength"] == s),
                          key=lambda r: r["calls_per_sample"])
            ax.plot([r["calls_per_sample"] for r in rows], [r["compliance"] for r in rows], style, color=colours[s],
                    label=f"{kind} s={s}", alpha=1.0 if kind == "reflect" else 0.45)
    rows = [base] + [r for r in results if r["method"].startswith("best-of-")]
    ax.plot([r["calls_per_sample"] for r in rows], [r["compliance"] for r in rows], "-s", color="black", label="best-of-N")
    ax.set_xlabel("model calls per sample")
    ax.set_ylabel(f"held-out compliance (n = {base['n']})")
    ax.set_title("Toy world: reflection vs best-of-N at equal model calls")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    print(f"frontier plot: {path}", flush=True)


if __name__ == "__main__":
    main()
