"""Run every benchmark in bench/, one process each; exit non-zero if any of them fails.

    python bench/run_all.py --quick          # seconds per script: checks that every benchmark still runs (make bench)
    python bench/run_all.py                  # the full measurements behind docs/performance.md (make bench FULL=1)
    python bench/run_all.py --quick --only bench_engine bench_training --skip bench_host

Each script prints its own markdown table; this runner prints them under a heading per script, then a summary.
Timings are reported, never judged: a benchmark fails only when its process does. Scripts that need hardware this
machine lacks (a CUDA GPU for the full SD1.5 training benchmark) are reported as skipped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def cuda_available() -> bool:
    # Asked in a child process: importing torch here would slow every run and hold memory the benchmarks need.
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, check=False)
    return probe.stdout.strip() == "True"


@dataclass
class Bench:
    script: str
    quick: list[str]
    full: list[str]
    needs_cuda_for_full: bool = False

    @property
    def name(self) -> str:
        return Path(self.script).stem


BENCHES = [
    Bench("bench_engine.py", ["--quick"], []),
    Bench("bench_training.py", ["--quick"], []),
    Bench("bench_rewards.py", ["--quick"], []),
    Bench("bench_rewards_width.py", ["--quick"], []),  # full: real-size ViT-L/H and BLIP, ~30 min on one thread
    Bench("bench_host.py", ["--quick"], []),  # needs the ComfyUI host: make setup-host
    Bench("bench_toyworld.py", ["--quick"], []),
    Bench("bench_reflection.py", ["--quick"], []),
    Bench("bench_flow_rollout.py", ["--quick"], []),  # closed form: the full grid takes a second too
    # Without a GPU the quick run takes the same code path on a toy UNet; the full run is SD1.5 at 512 px on CUDA.
    Bench("gpu_sd15_training.py", ["--tiny", "--device", "cpu"], [], needs_cuda_for_full=True),
    # Likewise: a toy-width transformer on the CPU; the full run is Flux.1's width at 1024 px tokens on CUDA.
    Bench("gpu_flux_memory.py", ["--tiny", "--device", "cpu"], [], needs_cuda_for_full=True),
]


def command(bench: Bench, quick: bool, gpu: bool) -> list[str] | None:
    """The command line for ``bench``, or None when this machine cannot run it."""
    if quick:
        args = ["--quick"] if bench.needs_cuda_for_full and gpu else bench.quick
    elif bench.needs_cuda_for_full and not gpu:
        return None
    else:
        args = bench.full
    return [sys.executable, str(BENCH / bench.script), *args]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds per script (smoke runs), not the full measurements")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. bench_engine)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these out")
    args = parser.parse_args(argv)
    names = {b.name for b in BENCHES}
    unknown = sorted((set(args.only or []) | set(args.skip)) - names)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    selected = [b for b in BENCHES if (not args.only or b.name in args.only) and b.name not in args.skip]
    gpu = any(b.needs_cuda_for_full for b in selected) and cuda_available()

    results = []
    for bench in selected:
        cmd = command(bench, args.quick, gpu)
        print(f"\n## {bench.name}\n", flush=True)
        if cmd is None:
            print("skipped: needs a CUDA GPU", flush=True)
            results.append((bench.name, "skipped", 0.0))
            continue
        print(f"$ python bench/{bench.script} {' '.join(cmd[2:])}".rstrip(), flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        results.append((bench.name, "ok" if rc == 0 else f"FAILED (exit {rc})", time.perf_counter() - start))

    print("\n## Summary\n\n| benchmark | result | wall s |\n|---|---|---:|")
    for name, outcome, seconds in results:
        print(f"| {name} | {outcome} | {seconds:.1f} |")
    failed = [name for name, outcome, _ in results if outcome.startswith("FAILED")]
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
