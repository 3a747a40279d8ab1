"""Two processes (accelerate, gloo on the CPU) train like one process on the same total batch."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.support import REPO
from tests.helpers.training_ddp import ddp_config, run_one_stage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EPS32 = 2.0**-24  # float32's unit roundoff: one rounding changes a value by at most this fraction of it


def adam_first_step(g: torch.Tensor, eps: float) -> torch.Tensor:
    """A weight's move per unit learning rate in Adam's first step: m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps)."""
    return g / (g.abs() + eps)


def sorted_rows(terms: torch.Tensor) -> list[bytes]:
    return sorted(row.numpy().tobytes() for row in terms)


@pytest.mark.parametrize("prompt_draws", [1, 2])
def test_two_processes_synchronise_gradients_like_one_process_on_the_whole_batch(tmp_path, prompt_draws):
    port, workers = free_port(), []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        workers.append(subprocess.Popen([sys.executable, "-m", "tests.helpers.training_ddp_worker", str(tmp_path),
                                         str(prompt_draws)],
                                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = ddp_config(str(tmp_path / "single"), prompt_draws)
        lora, grads, terms, draws = run_one_stage(config)  # meanwhile, the single-process reference
    finally:
        torch.set_num_threads(threads)
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert draws == prompt_draws  # with 2 draws, each process's rows come from both (DAPO's dynamic sampling)
    assert len(grads) == len(lora) == 64  # exactly one optimiser step, every LoRA weight
    assert [v.shape for v in lora.values()] == [g.shape for g in grads]  # the same parameter order
    gradient = torch.cat([g.flatten() for g in grads])
    scale = float(gradient.abs().max())
    assert scale > 1e-3

    # The premise: each process computed its transitions' gradients exactly as the reference did (one row per
    # network call, one transition per backward pass; tests/helpers/training_ddp.py), so the two ranks' terms
    # are, bit for bit, the reference's terms split in two.
    halves = [rank["terms"] for rank in ranks]
    assert halves[0].shape[0] > 0 and halves[1].shape[0] > 0
    assert sorted_rows(torch.cat(halves)) == sorted_rows(terms), "the processes' transitions are not the reference's"

    # So the synchronised gradients differ only in how the same N float32 terms g_i were summed. Recursive
    # float32 summation of n terms is off the exact sum by at most (n - 1) u sum_i |g_i| / (1 - (n - 1) u)
    # (u = 2^-24; Higham, Accuracy and Stability of Numerical Algorithms, section 4.2). The reference adds all N
    # terms into .grad in its shuffled order: (N - 1) u sum|g_i|. Each rank adds its n_r terms, the all-reduce
    # adds the two partial sums in float64 (2^-53 relative) and the result is rounded to float32 once (u |sum|):
    # (max n_r - 1) u sum|g_i| + u sum|g_i|. Clipping multiplies by exactly 1 (max_grad_norm 1e6). One more
    # u sum|g_i| covers the second-order terms (~ N^2 u^2 sum|g_i|, below it for N < 2000). Per element:
    #   |rank - reference| <= (N + max n_r) u sum_i |g_i|, with sum_i |g_i| from the terms themselves.
    n, n_max = terms.shape[0], max(h.shape[0] for h in halves)
    magnitude = terms.double().abs().sum(0)
    bound = (n + n_max) * EPS32 * magnitude
    exact = terms.double().sum(0)  # float64: off by at most N 2^-53 sum|g_i|, nothing next to the bound
    own = [h.double().sum(0) for h in halves]
    for r, rank in enumerate(ranks):
        synchronised = torch.cat([rank[f"grad.{i}"].flatten() for i in range(len(grads))])
        difference = (synchronised.double() - gradient.double()).abs()
        assert (difference <= bound).all(), f"rank {r}: {float((difference - bound).max()):.3g} beyond the summation bound"
        # The bound still catches a synchronisation bug: a rank left with its own half (no all-reduce), or the
        # sum halved (averaged over the processes) or doubled, leaves it on most of the non-zero elements.
        nonzero = exact != 0
        for name, wrong in (("its own half", own[r]), ("half", exact / 2), ("double", exact * 2)):
            caught = ((wrong - exact).abs() > bound)[nonzero].double().mean()
            assert caught > 0.9, f"a gradient of {name} would pass on {1 - caught:.0%} of the elements"

    for rank in ranks:
        offset = 0
        for (key, value), g in zip(lora.items(), grads):
            # The tolerance comes from Adam's first step, not from a fixed atol: with m = g and v = g^2 after bias
            # correction, each weight moves by lr * g / (|g| + eps), about lr * sign(g) however small g is (weight
            # decay moves both runs identically). So a gradient that is zero up to summation order can step by
            # anything in [-lr, lr], while a clearly non-zero one steps the same. Allowed: what the gradient bound
            # above can change in that step, per element, plus float32 rounding in each run: Adam's step
            # m_hat / (sqrt(v_hat) + eps) comes out of under 8 roundings (at most 8 u lr off), the weight of one
            # more (u |w|); twice that for two runs, rounded up to 16 u (lr + |w|).
            lr, eps = config.learning_rate, config.adam_epsilon
            tolerance = bound[offset : offset + g.numel()].view_as(g).float()
            offset += g.numel()
            step = adam_first_step(g, eps)
            moved = lr * torch.maximum((adam_first_step(g + tolerance, eps) - step).abs(),
                                       (adam_first_step(g - tolerance, eps) - step).abs())
            difference = (rank[f"lora.{key}"] - value).abs()
            slack = 16 * EPS32 * (value.abs() + lr)
            assert (difference <= moved + slack).all(), f"{key}: {(difference - moved - slack).max():.3g} beyond the Adam bound"
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0] if k != "terms")  # the processes agree bit for bit
