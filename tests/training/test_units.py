"""SRRL training pieces against direct computations: PPO loss and clipping, selection, KL, curriculum, LoRA
identity at init, kohya export keys (both namings, checked against ComfyUI's key scheme), bad names."""

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srrl_core.sampling import EpsilonPrediction, ddim_log_prob
from srrl_core import training
from srrl_core.training import (
    PolicyModel, TrainConfig, add_lora, build_policy, check_lora_name, clip_advantages, diffusers_to_ldm, export_lora,
    kohya_state_dict, ppo_clip_loss, register_model, remove_lora, select_siblings, take_rows, transition_kl,
)  # fmt: skip
from srrl_core.training.lora import adapters_disabled, lora_layers
from srrl_core.training.models import tiny_unet
from srrl_core.training.rollout import START, derive_seed


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_ppo_loss_and_both_clippings_equal_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    new, old = torch.randn(64, generator=gen) * 0.2, torch.randn(64, generator=gen) * 0.2
    raw = torch.randn(64, generator=gen) * 4  # some beyond the advantage clip of 5
    adv = clip_advantages(raw, clip=5.0, beta_positive=1.0, beta_negative=0.5)
    loss, ratio = ppo_clip_loss(new, old, adv, clip_range=0.1)
    for i in range(64):
        a = max(-5.0, min(5.0, raw[i].item()))
        a *= 1.0 if a > 0 else 0.5
        r = math.exp(new[i].item() - old[i].item())
        expected = max(-a * r, -a * min(max(r, 0.9), 1.1))
        assert ratio[i].item() == pytest.approx(r, rel=1e-6)
        assert loss[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # Clipping acts: ratios beyond 1 +- 0.1 stop contributing gradient in the direction that helps.
    assert (ratio - 1).abs().gt(0.1).any()


def test_ppo_gradient_vanishes_outside_the_trust_region():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, _ = ppo_clip_loss(new, old, adv, clip_range=0.1)
    loss.sum().backward()
    # Ratio 1.5 with A > 0 and ratio 0.5 with A < 0 are clipped (no gradient); the other two are not.
    assert new.grad[0] == 0 and new.grad[1] == 0 and new.grad[2] != 0 and new.grad[3] != 0


def test_selection_keeps_argmax_at_or_above_and_argmin_strictly_below():
    adv = torch.tensor([
        [0.5, 0.1, -0.5, 0.0],    # max exactly +0.5 kept; min exactly -0.5 not (< is strict)
        [0.49, 0.2, -0.51, 0.0],  # max below: dropped; min below -0.5: kept
        [2.0, 2.0, -3.0, -3.0],   # ties: the first of each
        [0.0, 0.0, 0.0, 0.0],     # nothing
    ])  # fmt: skip
    keep = select_siblings(adv, 0.5, -0.5)
    assert keep.tolist() == [
        [True, False, False, False],
        [False, False, True, False],
        [True, False, True, False],
        [False, False, False, False],
    ]


def test_transition_kl_is_the_gaussian_kl_per_element_and_log_prob_takes_per_row_sigmas():
    param = EpsilonPrediction()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 4, 4, generator=gen) * 3
    a, b = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    sigma, sigma_next = torch.tensor([5.0, 2.0, 1.0]), torch.tensor([2.0, 1.0, 0.3])
    kl = transition_kl(param, x, a, b, sigma, sigma_next, 1.0)
    for i in range(3):
        s, n = sigma[i], sigma_next[i]
        std = n * (1 - (n / s) ** 2).sqrt()  # VP, eta = 1
        direction = (n**2 - std**2).sqrt()
        mu_a = a[i] + direction * (x[i] - a[i]) / s
        mu_b = b[i] + direction * (x[i] - b[i]) / s
        assert kl[i].item() == pytest.approx(((mu_a - mu_b) ** 2).mean().item() / (2 * std.item() ** 2), rel=1e-5)
        one = ddim_log_prob(param, x[i : i + 1], a[i : i + 1], sigma[i : i + 1], sigma_next[i : i + 1], b[i : i + 1], 1.0)
        batched = ddim_log_prob(param, x, a, sigma, sigma_next, b, 1.0)
        assert batched[i].item() == pytest.approx(one.item(), rel=1e-6)
    assert transition_kl(param, x, a, a, sigma, sigma_next, 1.0).abs().max() == 0


def test_curriculum_matches_the_reference_and_seeds_do_not_repeat():
    config = TrainConfig()
    assert [config.split_step(n) for n in range(10)] == [1, 5, 9, 13, 17] * 2
    assert [config.rounds(n) for n in (0, 4, 5, 49)] == [0, 0, 1, 9]
    assert len({derive_seed(config.seed, n, START, 0) for n in range(50)}) == 50


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(steps=10), r"split_step_start \+ split_step_stride .* must be <= steps \(10\)"),
        (dict(prompts_per_stage=0), r"prompts_per_stage must be >= 1"),
        (dict(clip_range=2.0), r"clip_range must be .*\[0.0, 1.0\]"),
        (dict(rollout_eta=0.0), r"rollout_eta must be .*\[0.001, 1.0\]"),
        (dict(negative_threshold=1.0), r"negative_threshold must be .*<= 0.5"),
        (dict(mixed_precision="fp8"), r"mixed_precision must be one of"),
        (dict(reward_gap_scope="batch"), r"reward_gap_scope must be one of"),
        (dict(lora_targets=()), r"lora_targets must be a non-empty list"),
        (dict(lr_decay_stages=-1), r"lr_decay_stages must be >= 0"),
    ],
)
def test_config_rejects_bad_values_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['lr'\]"):
        TrainConfig.from_dict({"lr": 1e-4})


def test_config_names_a_renamed_setting_and_its_new_name():
    with pytest.raises(ValueError, match=r"'reflection_strength' was renamed to 'renoise_strength'"):
        TrainConfig.from_dict({"reflection_strength": 0.5})
    assert TrainConfig.from_dict({"renoise_strength": 0.5}).renoise_strength == 0.5
    with pytest.raises(ValueError, match=r"renoise_strength must be .*\[0.0, 1.0\]"):
        TrainConfig(renoise_strength=1.5)


def _unet_inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10.0, 700.0]), torch.randn(2, 5, 32, generator=gen)


def test_lora_is_the_identity_at_init_and_only_lora_gets_gradients():
    policy = build_policy("tiny", steps=4)
    cond = policy.encode(["a red cube", "a cat"])
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 0.5])
    guided = policy.guided(cond)
    with torch.no_grad():
        before = guided(x, sigma, 5.0)
    params = add_lora(policy.network, rank=4, alpha=4.0, conv=True)
    with torch.no_grad():
        after = guided(x, sigma, 5.0)
    assert torch.equal(before, after)  # B = 0: bit for bit
    guided(x, sigma, 5.0).square().mean().backward()
    trainable = {n for n, p in policy.network.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in policy.network.named_parameters() if ".lora_" in n} and len(params) == len(trainable)
    assert all(p.grad is None for n, p in policy.network.named_parameters() if ".lora_" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with torch.no_grad():
        for p in params:
            p.add_(0.05)
        moved = guided(x, sigma, 5.0)
        with adapters_disabled(policy.network):
            base = guided(x, sigma, 5.0)
    assert not torch.allclose(moved, before) and torch.equal(base, before)
    assert all(p.requires_grad for p in params)  # re-enabled adapters stay trainable
    remove_lora(policy.network)
    with torch.no_grad():
        assert torch.equal(guided(x, sigma, 5.0), before) and not lora_layers(policy.network)


def test_kohya_export_keys_shapes_and_scale_reproduce_the_lora_update(tmp_path):
    from safetensors.torch import load_file

    unet = tiny_unet()
    x, t, text = _unet_inputs()
    params = add_lora(unet, rank=4, alpha=8.0)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    path = export_lora(unet, str(tmp_path / "out.safetensors"), dtype=torch.float32)
    state = load_file(path)
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{prefix}.lora_down.weight", f"{prefix}.lora_up.weight", f"{prefix}.alpha"} <= set(state)
    assert "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in state
    assert len(state) == 3 * len(lora_layers(unet)) == 3 * 32
    assert state[f"{prefix}.lora_down.weight"].shape == (4, 32) and float(state[f"{prefix}.alpha"]) == 8.0
    # Merging W + alpha / rank * up @ down (ComfyUI's rule) gives the adapted network's output.
    with torch.no_grad():
        adapted = unet(x, t, encoder_hidden_states=text).sample
        for name, layer in lora_layers(unet).items():
            key = "lora_unet_" + name.replace(".", "_")
            up, down = state[f"{key}.lora_up.weight"], state[f"{key}.lora_down.weight"]
            layer.get_base_layer().weight += float(state[f"{key}.alpha"]) / down.shape[0] * (up @ down)
        remove_lora(unet)
        merged = unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_ldm_key_style_follows_comfyui_block_numbering(tmp_path):
    # Expected names from ComfyUI's own SD1.5 diffusion_model (input_blocks.1 holds down block 0's first
    # attention, output_blocks.3..5 are up block 1) and the LDM resnet names in_layers.2 / out_layers.3.
    sd15 = {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "layers_per_block": 2,
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}  # fmt: skip
    cases = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_out.0": "input_blocks.5.1.transformer_blocks.0.attn2.to_out.0",
        "down_blocks.2.resnets.0.conv1": "input_blocks.7.0.in_layers.2",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_k": "middle_block.1.transformer_blocks.0.attn1.to_k",
        "mid_block.resnets.1.conv2": "middle_block.2.out_layers.3",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.1.conv",
        "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2": "output_blocks.5.1.transformer_blocks.0.ff.net.2",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.3.resnets.2.conv_shortcut": "output_blocks.11.0.skip_connection",
    }  # fmt: skip
    for diffusers, ldm in cases.items():
        assert diffusers_to_ldm(diffusers, sd15) == ldm
    unet = tiny_unet()
    add_lora(unet)
    keys = kohya_state_dict(unet, to_ldm=unet.config)
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_output_blocks_3_1_transformer_blocks_0_attn2_to_v.lora_up.weight" in keys
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_out_0.alpha" in keys
    # A network that already has LDM names (ComfyUI's diffusion_model) keeps them.
    ldm_net = torch.nn.Module()
    ldm_net.input_blocks = torch.nn.ModuleList([torch.nn.Module(), torch.nn.Module()])
    ldm_net.input_blocks[1].attn1 = torch.nn.Module()
    ldm_net.input_blocks[1].attn1.to_q = torch.nn.Linear(8, 8)
    add_lora(ldm_net, targets=("to_q",), key_style="ldm")
    path = export_lora(ldm_net, str(tmp_path / "ldm.safetensors"), key_style="ldm")
    from safetensors.torch import load_file

    assert sorted(load_file(path)) == [f"lora_unet_input_blocks_1_attn1_to_q.{s}" for s in ("alpha", "lora_down.weight", "lora_up.weight")]


def test_a_target_that_reaches_no_layer_is_an_error_before_anything_is_injected():
    # peft itself only fails when no target matches: one misspelt suffix among several must not train silently.
    unet = tiny_unet()
    trainable = [p.requires_grad for p in unet.parameters()]
    with pytest.raises(ValueError, match=r"lora_targets \['add_embedding.proj'\] match no linear or convolution layer"):
        add_lora(unet, targets=("to_q", "add_embedding.proj"))
    ldm_net = torch.nn.Module()
    ldm_net.to_q = torch.nn.Linear(8, 8)
    with pytest.raises(ValueError, match="lora_conv: the network has no ResNet convolutions"):
        add_lora(ldm_net, targets=("to_q",), key_style="ldm", conv=True)
    assert not lora_layers(unet) and not lora_layers(ldm_net)
    assert [p.requires_grad for p in unet.parameters()] == trainable  # untouched: nothing frozen or thawed


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "", ".hidden", "x" * 200, "a..b"])
def test_lora_names_with_path_separators_are_rejected(name):
    with pytest.raises(ValueError, match="lora_name must be"):
        check_lora_name(name)
    assert check_lora_name("srrl_physics-v1.2") == "srrl_physics-v1.2"


def test_take_rows_handles_tensors_and_text_conditioning():
    policy = build_policy("tiny", steps=4)
    cond = policy.encode(["a", "b c", "d"])
    picked = take_rows(cond, [2, 0, 2])
    assert torch.equal(picked.embeds, cond.embeds[[2, 0, 2]]) and picked.added is None
    assert torch.equal(take_rows(cond.embeds, [1]), cond.embeds[1:2])
    with pytest.raises(TypeError, match="index_select"):
        take_rows(object(), [0])
    assert isinstance(policy, PolicyModel)


def _rollout_config(**changes):
    values = dict(steps=6, prompts_per_stage=2, split_time=3, split_step_start=2, split_step_stride=1, curriculum_period=3,
                  rounds_every=1, max_rounds=2, output_dir="unused", resume=False, tensorboard=False, progress=False)  # fmt: skip
    return TrainConfig(**{**values, **changes})


def test_rollout_siblings_share_the_prefix_and_rows_do_not_depend_on_the_split():
    from srrl_core.training import collect_rollout

    policy = build_policy("tiny", steps=6)
    config = _rollout_config()
    prompts = ["a red cube", "a blue sphere"]
    both = collect_rollout(policy, policy.encode(prompts), prompts, config, stage=1, rows=[0, 1])  # K = 1, split_step 3
    assert both.latents.shape == (3, 6, 4, 8, 8) and both.log_probs.shape == (3, 6) and both.trainable.all()
    fork = both.latents[0].view(2, 3, 4, 8, 8)
    assert torch.equal(fork[:, 0], fork[:, 1]) and torch.equal(fork[:, 0], fork[:, 2])  # one prefix per prompt
    after = both.next_latents[0].view(2, 3, 4, 8, 8)
    assert not torch.allclose(after[:, 0], after[:, 1])  # independent noise from the fork on
    assert both.model_calls == 6 + 6 + 6  # round 1: 6 denoise + 6 invert; rollout: 3 prefix + 3 branched
    # The second prompt sampled alone as global row 1 (another process's share) gives the same siblings.
    alone = collect_rollout(policy, policy.encode(prompts[1:]), prompts[1:], config, stage=1, rows=[1])
    # Batch size changes float rounding, which reflection (inversion) amplifies a little; other seeds differ by O(1).
    torch.testing.assert_close(alone.final, both.final[3:], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(alone.log_probs, both.log_probs[:, 3:], rtol=1e-3, atol=1e-4)


def test_mirror_prompts_pair_each_draw_with_its_mirror_image_on_the_same_noise():
    from srrl_core.training import SRRLTrainer, collect_rollout
    from srrl_core.training.mirror import has_side, mirror_prompt

    assert mirror_prompt("Left lamp, ball on the right; leftover light") == "Right lamp, ball on the left; leftover light"
    assert mirror_prompt(mirror_prompt("a cube on the left")) == "a cube on the left" and not has_side("a red cube")
    prompts = ["a red cube on the left", "a blue sphere on the right", "a green cone"]
    config = _rollout_config(prompts_per_stage=4, groups_per_prompt=2, mirror_prompts=True)
    trainer = SRRLTrainer(build_policy("tiny", 6), lambda images, prompts: images.mean(dim=(1, 2, 3)), prompts, config)
    drawn = trainer.stage_prompts(3)
    assert len(drawn) == 8 and all(mirror_prompt(drawn[i]) == drawn[i + 2] for i in (0, 1, 4, 5))  # [p, p, m(p), m(p)] x 2
    assert trainer.noise_rows(8) == [0, 1, 0, 1, 4, 5, 4, 5] and trainer.noise_rows(8, draw=1) == [8, 9, 8, 9, 12, 13, 12, 13]
    # Groups on one noise row start and branch from the same noise: one prompt twice on a row gives one rollout twice.
    policy = trainer.policy
    same = collect_rollout(policy, policy.encode(["a red cube"] * 2), ["a red cube"] * 2, config, stage=1, rows=[5, 5])
    assert torch.equal(same.final[:3], same.final[3:]) and torch.equal(same.log_probs[:, :3], same.log_probs[:, 3:])
    apart = collect_rollout(policy, policy.encode(["a red cube"] * 2), ["a red cube"] * 2, config, stage=1, rows=[5, 6])
    assert not torch.allclose(apart.final[:3], apart.final[3:])
    with pytest.raises(ValueError, match=r"prompts_per_stage must be even with mirror_prompts"):
        _rollout_config(prompts_per_stage=3, mirror_prompts=True)


def test_concatenated_rollouts_keep_each_group_in_order():
    from srrl_core.training.rollout import collect_rollout, concat_rollouts

    policy = build_policy("tiny", steps=6)
    config = _rollout_config()
    prompts = ["a red cube", "a blue sphere"]
    both = collect_rollout(policy, policy.encode(prompts), prompts, config, stage=1, rows=[0, 1])
    parts = [collect_rollout(policy, policy.encode([p]), [p], config, stage=1, rows=[row]) for row, p in enumerate(prompts)]
    joined = concat_rollouts(parts)
    assert joined.prompts == prompts and joined.model_calls == sum(p.model_calls for p in parts)
    assert joined.latents.shape == both.latents.shape and joined.final.shape == both.final.shape
    for name in ("latents", "next_latents", "log_probs", "final"):  # batch-size rounding only (see the test above)
        torch.testing.assert_close(getattr(joined, name), getattr(both, name), rtol=1e-3, atol=1e-4)
    assert concat_rollouts(parts[:1]) is parts[0]
    other_stage = collect_rollout(policy, policy.encode(prompts[:1]), prompts[:1], config, stage=0, rows=[0])
    with pytest.raises(ValueError, match="only rollouts of one stage"):
        concat_rollouts([parts[0], other_stage])


def test_scored_reflection_rounds_are_logged_and_the_best_is_carried(tmp_path):
    from srrl_core.training import SRRLTrainer

    config = _rollout_config(output_dir=str(tmp_path), score_reflection_rounds=True, reflection_selection="best")
    trainer = SRRLTrainer(build_policy("tiny", 6), lambda images, prompts: images.mean(dim=(1, 2, 3)), ["a red cube"], config)
    metrics = trainer.run_stage(2)  # K = 2 rounds, each scored
    assert {"round_reward_mean/0", "round_reward_mean/1"} <= set(metrics) and metrics["reflection_rounds"] == 2


def test_every_round_trains_and_carries_each_groups_best_sibling(tmp_path):
    from srrl_core.training import SRRLTrainer
    from srrl_core.training.rollout import collect_rollout, continue_round

    brightness = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731
    config = _rollout_config(output_dir=str(tmp_path), train_every_round=True, split_step_start=3, split_step_stride=0,
                             renoise_strength=0.5, sibling_selection="all")  # fmt: skip
    trainer = SRRLTrainer(build_policy("tiny", 6), brightness, ["a red cube", "a blue sphere"], config)
    policy, prompts = trainer.policy, ["a red cube", "a blue sphere"]
    cond = policy.encode(prompts)
    first = collect_rollout(policy, cond, prompts, config, stage=2, rows=[0, 1])
    assert first.model_calls == 6 and not first.round_scores  # no deterministic reflection before a trained round 0
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    second = continue_round(policy, cond, first, rewards, config, stage=2, rows=[0, 1], round_index=1)
    assert second.model_calls == 3 + 3 and torch.equal(second.sigmas, first.sigmas)  # 3 inverted + 3 denoised steps
    # Round 1 restarts from the re-noised best sibling of each group (rows 1 and 3): rebuild that by hand.
    from srrl_core.sampling.renoise import renoise

    back = renoise(policy.guided(cond), first.final[[1, 3]], policy.sigmas, renoise_strength=0.5, scale=config.inversion_scale)
    again = continue_round(policy, cond, first, rewards, config, stage=2, rows=[0, 1], round_index=1)
    assert torch.equal(again.final, second.final) and torch.equal(second.latents[0].view(2, 3, 4, 8, 8)[:, 0], back.latent)
    assert not torch.allclose(second.final, first.final)  # its own branch noise, not round 0's
    metrics = trainer.run_stage(2)  # K = 2: rounds 0, 1, 2 all trained
    assert metrics["sampled_images"] == 3 * 2 * 3 and metrics["kept_trajectories"] == 18
    assert {f"round_reward_mean/{k}" for k in range(3)} <= set(metrics) and metrics["model_calls"] == 6 + 2 * 6
    # advantages_per_round: each round's rewards are standardised among themselves (round-major blocks).
    per_round = SRRLTrainer(build_policy("tiny", 6), brightness, prompts, dataclasses.replace(config, advantages_per_round=True))
    calls, estimate = [], per_round.advantages
    per_round.advantages = lambda rewards, keys, group_size: calls.append((rewards.clone(), list(keys))) or estimate(rewards, keys, group_size=group_size)
    per_round.run_stage(2)
    assert [len(keys) for _, keys in calls] == [6, 6, 6] and all(keys == calls[0][1] for _, keys in calls)
    with pytest.raises(ValueError, match="train_every_round needs prompt_draws = 1"):
        _rollout_config(train_every_round=True, prompt_draws=2)


def test_the_update_leaves_cudnn_attention_out_on_cuda_only():
    from srrl_core.training.ppo import update_attention

    cuda = torch.backends.cuda
    before = (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled())
    with update_attention(torch.device("cpu")):
        assert cuda.cudnn_sdp_enabled() == before[0]
    with update_attention(torch.device("cuda")):  # sets torch's backend flags; needs no GPU
        assert not cuda.cudnn_sdp_enabled() and cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled() and cuda.math_sdp_enabled()
    assert (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled()) == before


def test_the_branch_point_skips_deterministic_steps_so_siblings_always_differ():

    from srrl_core.training import SRRLTrainer, collect_rollout
    from srrl_core.training.rollout import branch_point

    policy = build_policy("tiny", steps=6)
    ending_at_zero = torch.cat([policy.sigmas[:-1], torch.zeros(1)])  # the last step lands on alpha = 1: varsigma = 0
    param = policy.parametrization
    assert branch_point(param, policy.sigmas, 1, 1.0) == 5  # every step stochastic: fork before the last
    assert branch_point(param, ending_at_zero, 1, 1.0) == 4  # one earlier: the last step cannot make siblings differ
    assert branch_point(param, ending_at_zero, 5, 1.0) == 0 and branch_point(param, ending_at_zero, 6, 1.0) is None
    policy = dataclasses.replace(policy, sigmas=ending_at_zero)
    config = _rollout_config(split_step_start=1, split_step_stride=0, curriculum_period=1, max_rounds=0)
    rollout = collect_rollout(policy, policy.encode(["a red cube"]), ["a red cube"], config, stage=0, rows=[0])
    assert rollout.trainable.tolist() == [True, False]
    assert not torch.allclose(rollout.final[0], rollout.final[1])
    with pytest.raises(ValueError, match=r"largest split step \(6\) exceeds the 5 stochastic steps"):
        SRRLTrainer(policy, lambda images, prompts: images.mean(dim=(1, 2, 3)), ["a"],
                    _rollout_config(split_step_start=6, split_step_stride=0, curriculum_period=1))


def test_the_training_package_never_imports_the_toy_world():
    for path in sorted(Path(training.__file__).parent.glob("*.py")):
        imports = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                   if re.match(r"\s*(from|import)\s", line) and "toyworld" in line]  # fmt: skip
        assert not imports, f"{path.name} imports the toy world: {imports}"


def test_models_register_by_entry_point_and_toy_builds_in_a_fresh_interpreter():
    code = ("import sys; from srrl_core.training import build_policy; assert 'srrl_core.toyworld' not in sys.modules; "
            "policy = build_policy('toy', 4); print(policy.name, tuple(policy.latent_shape), policy.steps)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(training.__file__).parents[2], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "toyworld (3, 32, 32) 4"
    with pytest.raises(ValueError, match=r"'package.module:function' path, got 'no_colon'"):
        register_model("broken", "no_colon")
    with pytest.raises(ValueError, match=r"a callable or a 'package.module:function' path, got 3"):
        register_model("broken", 3)
