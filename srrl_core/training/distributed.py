"""Process groups for training on several GPUs or machines (accelerate), and the single-process default.

Gradients are synchronised explicitly, once per optimiser step, by summing one flat buffer across processes
(each process's loss is already divided by the *global* number of transitions in the step). DDP's
per-backward all-reduce is not used: after selection every process keeps a different number of transitions, so
processes run different numbers of micro-batches, which would deadlock DDP, and one reduction per optimiser step
moves less data under gradient accumulation.
"""

from __future__ import annotations

import torch


class SingleProcess:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1
    is_main = True

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        pass


class AccelerateProcesses:
    """The processes of an ``accelerate.Accelerator`` (``accelerate launch``; gloo on CPU, NCCL on GPUs)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes
        self.is_main = accelerator.is_main_process

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's equally sized tensor along dim 0, in rank order."""
        if self.world_size == 1:
            return tensor
        return self.accelerator.gather(tensor.to(self.accelerator.device)).to(tensor.device)

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            buffer = tensor.to(self.accelerator.device)
            torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
            tensor.copy_(buffer)
        return tensor

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()
