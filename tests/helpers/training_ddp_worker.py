"""One process of the two-process (gloo, CPU) gradient-synchronisation test in tests/training/test_ddp.py.

Run from the repository root as ``python -m tests.helpers.training_ddp_worker OUT_DIR PROMPT_DRAWS`` with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT set. Trains one stage of the tiny model with accelerate and writes this rank's
LoRA, synchronised gradients and per-transition gradient terms to OUT_DIR/rank<r>.safetensors.
"""

import os
import sys

import torch

from tests.helpers.training_ddp import ddp_config, run_one_stage


def main(out_dir: str, prompt_draws: int) -> None:
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from srrl_core.training import AccelerateProcesses

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == int(os.environ["WORLD_SIZE"]), accelerator.state
    config = ddp_config(os.path.join(out_dir, "run"), prompt_draws)
    lora, grads, terms, _ = run_one_stage(config, AccelerateProcesses(accelerator))
    save_file({**{f"lora.{k}": v for k, v in lora.items()}, **{f"grad.{i}": g for i, g in enumerate(grads)}, "terms": terms},
              os.path.join(out_dir, f"rank{accelerator.process_index}.safetensors"))  # fmt: skip
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
