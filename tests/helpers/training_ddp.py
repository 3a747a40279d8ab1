"""Shared by tests/training/test_ddp.py and its worker processes: one SRRL stage on the tiny model.

The reference (one process, all 4 prompts) and each rank (2 prompts) must compute every transition's gradient
bit for bit alike, so that their synchronised gradients differ only in the order the same float32 terms are
summed. Two things would otherwise make the batch composition leak into the rounding: the network evaluated on
batches of 4 or 2 prompts' rows (matrix kernels may block and sum differently for another batch size), and
micro-batches of several transitions (a micro-batch's weight gradient sums over its rows inside one kernel). So the
tiny model's denoiser runs one row at a time, and every micro-batch holds one transition: each network call, and
each backward pass, sees the same inputs in both runs. Everything else (prompts, seeds, selection, one optimiser
step over the whole stage, the all-reduce) is the trainer's own.
"""

import torch

from srrl_core.training import SRRLTrainer, TrainConfig, build_policy, lora_state_dict
from srrl_core.training.policy import take_rows

PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a white cat"]


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def brightness_but_cubes_and_cats_tie(images, prompts):
    """Two of the four prompts teach nothing: with ``prompt_draws`` the stage draws again."""
    tied = torch.tensor([p in ("a red cube", "a white cat") for p in prompts])
    return torch.where(tied, torch.full((len(prompts),), 0.5), brightness(images, prompts))


def ddp_config(output_dir: str, prompt_draws: int = 1) -> TrainConfig:
    # One optimiser step (everything in one accumulation), no clipping, so the step shows the summed gradient;
    # one transition per micro-batch, so each backward pass is one term of that sum.
    return TrainConfig(
        steps=4, stages=1, prompts_per_stage=4, split_time=3, split_step_start=2, split_step_stride=0, curriculum_period=1,
        epochs=1, trajectories_per_update=1000, micro_batch_size=1, max_grad_norm=1e6, learning_rate=1e-3,
        prompt_draws=prompt_draws, output_dir=output_dir, resume=False, tensorboard=False, progress=False,
    )  # fmt: skip


def one_row_at_a_time(denoiser):
    """``denoiser`` evaluated row by row: a row's prediction no longer depends on what else is in the batch."""

    def call(x, sigma, cond):
        return torch.cat([denoiser(x[i : i + 1], sigma[i : i + 1], take_rows(cond, [i])) for i in range(x.shape[0])])

    return call


def run_one_stage(config: TrainConfig, distributed=None) -> tuple[dict, list[torch.Tensor], torch.Tensor, int]:
    """(LoRA state after the stage, gradients as the optimiser saw them, terms [T, all LoRA elements]: each
    backward pass's own gradient, flattened over the parameters in order, as it was added into ``.grad``; the
    stage's prompt draws)."""
    policy = build_policy("tiny", config.steps)
    policy.denoiser = one_row_at_a_time(policy.denoiser)
    grads = []
    reward = brightness if config.prompt_draws == 1 else brightness_but_cubes_and_cats_tie
    trainer = SRRLTrainer(policy, reward, PROMPTS, config, distributed=distributed,
                          callbacks=[lambda event, info: grads.extend(p.grad.clone() for p in trainer.params)
                                     if event == "optimizer_step" else None])  # fmt: skip
    per_param = [[] for _ in trainer.params]
    for i, p in enumerate(trainer.params):  # a leaf's hook sees the incoming gradient before it is accumulated
        p.register_hook(lambda g, i=i: per_param[i].append(g.detach().clone()))
    trainer.train()
    counts = {len(calls) for calls in per_param}
    assert len(counts) == 1, f"every backward pass must reach every LoRA weight, got {counts} calls"
    terms = torch.stack([torch.cat([calls[t].flatten() for calls in per_param]) for t in range(counts.pop())])
    return lora_state_dict(trainer.policy.network), grads, terms, trainer.history[0]["prompt_draws"]
