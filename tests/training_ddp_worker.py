"""One process of the two-process (gloo, CPU) gradient-synchronisation test in test_training_ddp.py.

Run with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set; argv: OUT_DIR. Trains one stage of the
tiny model with accelerate and writes this rank's LoRA and synchronised gradients to OUT_DIR/rank<r>.safetensors.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.training_ddp_support import ddp_config, run_one_stage  # noqa: E402


def main(out_dir: str) -> None:
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from srrl_core.training import AccelerateProcesses

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == int(os.environ["WORLD_SIZE"]), accelerator.state
    lora, grads = run_one_stage(ddp_config(os.path.join(out_dir, "run")), AccelerateProcesses(accelerator))
    save_file({**{f"lora.{k}": v for k, v in lora.items()}, **{f"grad.{i}": g for i, g in enumerate(grads)}},
              os.path.join(out_dir, f"rank{accelerator.process_index}.safetensors"))  # fmt: skip
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
