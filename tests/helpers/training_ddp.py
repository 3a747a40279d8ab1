"""Shared by tests/training/test_ddp.py and its worker processes: one SRRL stage on the tiny model."""

import torch

from srrl_core.training import SRRLTrainer, TrainConfig, build_policy, lora_state_dict

PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a white cat"]


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def ddp_config(output_dir: str) -> TrainConfig:
    # One optimiser step (everything in one accumulation), no clipping, so the step shows the summed gradient.
    return TrainConfig(
        steps=4, stages=1, prompts_per_stage=4, split_time=3, split_step_start=2, split_step_stride=0, curriculum_period=1,
        epochs=1, trajectories_per_update=1000, micro_batch_size=3, max_grad_norm=1e6, learning_rate=1e-3,
        output_dir=output_dir, resume=False, tensorboard=False, progress=False,
    )  # fmt: skip


def run_one_stage(config: TrainConfig, distributed=None) -> tuple[dict, list[torch.Tensor]]:
    """(LoRA state after the stage, gradients as the optimiser saw them)."""
    grads = []
    trainer = SRRLTrainer(build_policy("tiny", config.steps), brightness, PROMPTS, config, distributed=distributed,
                          callbacks=[lambda event, info: grads.extend(p.grad.clone() for p in trainer.params)
                                     if event == "optimizer_step" else None])  # fmt: skip
    trainer.train()
    return lora_state_dict(trainer.policy.network), grads
