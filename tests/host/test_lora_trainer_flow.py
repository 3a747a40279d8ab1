"""The LoRA Trainer node on flow models in current ComfyUI: tiny Flux and SD3 (MMDiT) models built from ComfyUI's own
classes (``supported_models`` config -> ``model_base`` model -> ``ModelPatcher``, as its loaders do), and the tiny
SD1.5 checkpoint patched to rectified flow by ModelSamplingSD3.

Checked: the LoRA goes into the architecture's layers (ComfyUI's module names), one training stage changes the
model's output through the stock LoRA path (``comfy.sd.load_lora_for_models``), every exported key is mapped by the
host's own key map (``comfy.lora.model_lora_keys_unet``), base weights keep their dtype while the LoRA and AdamW's
state are float32, DiT blocks are gradient-checkpointed, the node's ``guidance`` reaches Flux (and only Flux), and
wrong ``lora_targets`` or an unsupported model fail before any work. The March-2024 host has neither Flux nor SD3
nor ModelSamplingSD3: these tests skip there.
"""

from __future__ import annotations

import logging
import os
import zlib

import pytest
import torch

from srrl_core.rewards.base import Reward

from tests.helpers import hostlib

TRAIN_ARGS = {
    "prompts": "a bright sky\na dark cave", "width": 64, "height": 64, "stages": 1, "prompts_per_stage": 2, "steps": 4,
    "scheduler": "simple", "split_time": 2, "max_rounds": 0, "reflection_cfg": 3.0, "rollout_cfg": 5.0, "inversion_cfg": 0.1,
    "learning_rate": 1e-3, "lora_rank": 4, "lora_alpha": 4.0, "seed": 300, "resume": False,
}  # fmt: skip

FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 48,
    "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 14, 14],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}  # fmt: skip
FLUX_LAYERS = {f"double_blocks.0.{stream}_{name}" for stream in ("img", "txt")
               for name in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")} | {"single_blocks.0.linear1", "single_blocks.0.linear2"}  # fmt: skip

# MMDiT fixes hidden size = 64 x depth and heads = depth; block 0 has SD3.5's second image attention (attn2); the
# last block's text stream is "pre-only" (no attn.proj, no MLP), as in SD3.
SD3_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None, "adm_in_channels": 32,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 48, "out_features": 128}},
    "num_patches": 64, "pos_embed_max_size": 8, "pos_embed_scaling_factor": None, "qk_norm": "rms",
    "x_block_self_attn_layers": [0],
}  # fmt: skip
SD3_LAYERS = ({f"joint_blocks.{i}.x_block.{n}" for i in (0, 1) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
              | {"joint_blocks.0.x_block.attn2.qkv", "joint_blocks.0.x_block.attn2.proj", "joint_blocks.1.context_block.attn.qkv"}
              | {f"joint_blocks.0.context_block.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")})  # fmt: skip


class Brightness(Reward):
    """Mean brightness x 1000: stage 0 forks at the last step, whose noise on a flow schedule is ~sigma_min (3e-4
    for Flux), so siblings differ by ~1e-4 in brightness — below the advantages' std floor (0.01) unscaled."""

    name = "brightness"

    def _score(self, images, prompts):
        return 1000.0 * images.mean(dim=(1, 2, 3))


class TextStub:
    """A CLIP as the trainer calls it (tokenize, encode_from_tokens with the pooled output): seeded token states
    [1, tokens, width] and a pooled vector [1, pooled] per prompt, standing in for T5 + CLIP-L without weights."""

    def __init__(self, width: int, pooled: int, tokens: int = 6):
        self.width, self.pooled, self.tokens = width, pooled, tokens

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, tokens, return_pooled=False):
        generator = torch.Generator().manual_seed(zlib.crc32(tokens.encode()))
        cond = torch.randn(1, self.tokens, self.width, generator=generator)
        pooled = torch.randn(1, self.pooled, generator=generator)
        return (cond, pooled) if return_pooled else cond


class VAEStub:
    """Decodes a latent [B, C, h, w] to an IMAGE [B, 8h, 8w, 3] in [0, 1] (its first three channels, upsampled)."""

    def decode(self, latents):
        return torch.sigmoid(torch.nn.functional.interpolate(latents[:, :3].float(), scale_factor=8.0)).movedim(1, -1)


@pytest.fixture(scope="module")
def host(comfy_host_dir):
    hostlib.ensure_host_importable(comfy_host_dir)
    import importlib.util

    if importlib.util.find_spec("comfy.ldm.flux") is None:
        pytest.skip("this ComfyUI host has no Flux / SD3 (the March-2024 host); run with SRRL_COMFYUI_DIR=<current "
                    "ComfyUI>, see tests/host/install_current_comfyui.md")
    from tests.helpers.support import load_pack

    return load_pack(hostlib.PACK_LINK_NAME)


def tiny_model(config_class: str, unet_config: dict, dtype=torch.float32, seed: int = 0):
    """A ModelPatcher over ComfyUI's own model class for ``config_class`` (comfy.supported_models), with seeded
    weights loaded through the model's own load_model_weights — the steps of comfy.sd.load_diffusion_model_state_dict
    without its detection, which fixes full-size widths."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_class)(unet_config)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.diffusion_model.state_dict().items():
        if key.endswith((".scale", "ln_q.weight", "ln_k.weight")):  # RMSNorm gains
            weights = torch.ones(value.shape)
        elif value.ndim >= 2:
            weights = torch.randn(value.shape, generator=generator) / value[0].numel() ** 0.5
        else:
            weights = 0.02 * torch.randn(value.shape, generator=generator)
        state[key] = weights.to(value.dtype)
    model.load_model_weights(state, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())  # fmt: skip


def exported_modules(tensors: dict) -> set[str]:
    return {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}


def unmapped(model, tensors: dict, caplog) -> list[str]:
    """Exported module keys the host's key map does not know, plus any the host's loader reports as not loaded."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    missing = sorted(m for m in exported_modules(tensors) if m not in key_map)
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        patches = comfy.lora.load_lora(tensors, key_map)
    missing += [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert len(patches) == len(exported_modules(tensors))
    return missing


def output(model, prompt: str, clip) -> torch.Tensor:
    """The model's denoised prediction for a fixed latent at sigma 0.6 (the host's own apply_model)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 8, 8, generator=generator)
    cross_attn, pooled = clip.encode_from_tokens(prompt, return_pooled=True)
    conds = model.model.extra_conds(cross_attn=cross_attn, pooled_output=pooled, width=64, height=64, device="cpu")
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([0.6]), **{k: c.cond for k, c in conds.items()}).clone()


def train(pack, model, clip, lora_name, **override):
    import folder_paths

    with torch.inference_mode():  # as the host runs nodes
        out = pack.nodes.lora_trainer.LoRATrainer().train(model, clip, VAEStub(), Brightness(), lora_name=lora_name,
                                                          **(TRAIN_ARGS | override))  # fmt: skip
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], out["result"][1])
    from safetensors.torch import load_file

    tensors = load_file(path)
    os.remove(path)
    return out, tensors


def count_checkpoint_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    return calls


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_trainer_trains_a_tiny_dit_and_the_stock_loader_maps_every_key(host, family, monkeypatch, caplog):
    config_class, unet_config, layers = ("Flux", FLUX_CONFIG, FLUX_LAYERS) if family == "flux" else ("SD3", SD3_CONFIG, SD3_LAYERS)
    model = tiny_model(config_class, unet_config)
    clip = TextStub(width=48, pooled=32)
    network = model.model.diffusion_model
    before_weights = {k: v.clone() for k, v in network.state_dict().items()}
    before = output(model, "a bright sky", clip)
    checkpoints = count_checkpoint_calls(monkeypatch)
    calls = []  # the keyword arguments of every network call while training
    hook = network.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    try:
        out, tensors = train(host, model, clip, f"srrl_test_{family}", guidance=2.0)  # not Flux's default, 3.5
    finally:
        hook.remove()
    trained, name, _ = out["result"]

    # The node's guidance input is Flux's distilled guidance on every call; other models never get one.
    assert calls
    if family == "flux":
        assert all(torch.equal(c["guidance"], torch.full_like(c["guidance"], 2.0)) for c in calls)
    else:
        assert not any("guidance" in c for c in calls)

    # LoRA in exactly the architecture's layers (modulation, embedders and final layer left out), ComfyUI's names.
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert exported_modules(tensors) == {"lora_unet_" + m.replace(".", "_") for m in layers}
    assert len(tensors) == 3 * len(layers)  # lora_down, lora_up, alpha
    assert unmapped(model, tensors, caplog) == []
    assert len(trained.patches) == len(layers)  # the node's own stock-loader call patched every layer
    assert "changed nothing" not in out["ui"]["text"][0]
    assert checkpoints[0] > 0  # the update ran through gradient-checkpointed blocks
    # The host's model is its base model again: no LoRA layers, no checkpoint wrappers, the same weights.
    assert not any(".lora_" in n for n, _ in network.named_parameters())
    assert all("forward" not in b.__dict__ for b in network.modules())
    assert getattr(network, "use_checkpoint", False) is False
    after_weights = network.state_dict()
    assert all(torch.equal(after_weights[k], before_weights[k]) for k in before_weights)
    # One stage of training changed the output through the stock LoRA path; the base output is unchanged.
    changed = output(trained, "a bright sky", clip)
    assert (changed - before).abs().max() > 1e-6
    assert torch.equal(output(model, "a bright sky", clip), before)


def test_flux_conditioning_comes_from_the_hosts_extra_conds(host):
    from srrl_core.sampling import RectifiedFlow

    model = tiny_model("Flux", FLUX_CONFIG)
    comfy_policy = host.nodes.comfy_policy
    with comfy_policy.trainable(model.clone()):
        policy = comfy_policy.policy_from_host(model, TextStub(48, 32), VAEStub(), 64, 64, "simple", 4, name="Flux")
        cond = policy.encode(["a bright sky", "a dark cave"])
    assert set(cond.kwargs) == {"c_crossattn", "y", "guidance"}
    assert cond.kwargs["c_crossattn"].shape == (2, 6, 48) and cond.kwargs["y"].shape == (2, 32)
    assert cond.kwargs["guidance"].tolist() == [3.5, 3.5]  # Flux.extra_conds' default (FluxGuidance's)
    assert isinstance(policy.parametrization, RectifiedFlow)
    assert policy.sigmas[0] == pytest.approx(1.0) and policy.latent_shape == (16, 8, 8)
    # Text conditionings of different lengths cannot share a batch in a joint-attention model: a clear error.
    long = comfy_policy.HostConditioning({k: v[:1] for k, v in cond.kwargs.items()} | {"c_crossattn": torch.zeros(1, 9, 48)})
    with pytest.raises(ValueError, match="prompts: .* different lengths"):
        cond.concat(long)


def test_lora_and_optimizer_state_are_float32_over_bf16_base_weights(host, monkeypatch):
    model = tiny_model("Flux", FLUX_CONFIG, dtype=torch.bfloat16)
    network = model.model.diffusion_model
    seen = []

    class RecordingAdamW(torch.optim.AdamW):  # the trainer's optimiser, whichever module builds it
        def step(self, *args, **kwargs):
            result = super().step(*args, **kwargs)
            seen.append({
                "base": network.double_blocks[0].img_attn.qkv.base_layer.weight.dtype,
                "lora": {p.dtype for group in self.param_groups for p in group["params"]},
                "adam": {v.dtype for state in self.state.values() for v in state.values() if v.ndim > 0},
            })  # fmt: skip
            return result

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    train(host, model, TextStub(48, 32), "srrl_test_flux_bf16")
    assert seen and all(s == {"base": torch.bfloat16, "lora": {torch.float32}, "adam": {torch.float32}} for s in seen)
    assert network.double_blocks[0].img_attn.qkv.weight.dtype == torch.bfloat16


def test_wrong_lora_targets_and_unsupported_models_fail_before_any_work(host):
    model = tiny_model("Flux", FLUX_CONFIG)
    node = host.nodes.lora_trainer.LoRATrainer()
    args = TRAIN_ARGS | {"lora_name": "srrl_test_never_written"}
    with torch.inference_mode(), pytest.raises(ValueError, match=r"lora_targets: 'to_q' match\(es\) no linear .* Flux"):
        node.train(model, TextStub(48, 32), VAEStub(), Brightness(), lora_targets="img_attn.qkv, to_q", **args)
    with torch.inference_mode(), pytest.raises(ValueError, match="lora_targets: 'img attn' is not a module-name suffix"):
        node.train(model, TextStub(48, 32), VAEStub(), Brightness(), lora_targets="img attn", **args)

    class HunyuanDiT:  # any model class the trainer does not know
        diffusion_model = torch.nn.Linear(1, 1)

    unsupported = type("ModelPatcher", (), {"model": HunyuanDiT()})()
    with torch.inference_mode(), pytest.raises(ValueError, match="model class HunyuanDiT .* diffusion model Linear"):
        node.train(unsupported, TextStub(48, 32), VAEStub(), Brightness(), **args)


def test_user_lora_targets_replace_the_default(host, caplog):
    model = tiny_model("Flux", FLUX_CONFIG)
    _, tensors = train(host, model, TextStub(48, 32), "srrl_test_flux_targets", lora_targets="img_attn.qkv,single_blocks.*.linear1")
    assert exported_modules(tensors) == {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"}
    assert unmapped(model, tensors, caplog) == []


def test_sd15_patched_to_flow_by_model_sampling_sd3(host, comfy_inprocess, caplog):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    from srrl_core.sampling import RectifiedFlow

    model, clip, _ = comfy_inprocess
    with torch.inference_mode():
        flow = ModelSamplingSD3().patch(model, 3.0)[0]
    assert isinstance(host.nodes.comfy_denoiser.parametrization_of(flow), RectifiedFlow)
    out, tensors = train(host, flow, clip, "srrl_test_sd15_flow")
    assert any(k.startswith("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q") for k in tensors)
    assert unmapped(model, tensors, caplog) == []
    assert "changed nothing" not in out["ui"]["text"][0]
