"""The CLI trains LoRAs on flow transformers: tiny random Flux and SD3.5-layout pipelines built here (no downloads).

Each pipeline is the real diffusers class (FluxPipeline / StableDiffusion3Pipeline) with a one- or two-block
transformer, one-layer CLIP / T5 text encoders and a two-block VAE, tokenizers built from in-memory vocabularies,
saved with save_pretrained and loaded back by ``[model] name = "diffusers"``.

The exported keys are checked against the host's own LoRA code (comfy.lora.model_lora_keys_unet + load_lora) of
a ComfyUI that has Flux and SD3 (SRRL_COMFYUI_DIR or .cache/comfyui-host); the March-2024 host has neither, so
that check skips there with the reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from srrl_core.adapters.diffusers_transformer import FLUX_LORA_TARGETS, SD3_LORA_TARGETS, DiffusersTransformerDenoiser
from srrl_core.sampling import ClassifierFreeGuidance, prior_latent, sample
from srrl_core.training import build_policy
from srrl_core.training.export import export_lora
from srrl_core.training.lora import add_lora, lora_layers, remove_lora, target_pattern
from tests.helpers.support import REPO

CLIP_VOCAB = 514  # two specials + the 256 byte symbols, alone and word-final


def clip_tokenizer():
    """CLIP's byte-level BPE with no merges: every character is a token (max length 77 as CLIP's)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    assert len(vocab) == CLIP_VOCAB
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    """A unigram T5 tokenizer over lower-case letters (unknown characters map to <unk>)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(chr(c), -1.0) for c in range(97, 123)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def clip_encoder(seed, projection):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                            max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def t5_encoder(seed):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=30, d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=2)).eval()


def tiny_vae(seed):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, shift_factor=0.1, scaling_factor=0.9)  # fmt: skip


def tiny_pipeline(family: str, folder: str):
    """A FluxPipeline (one double, one single block, guidance embedding) or a StableDiffusion3Pipeline in SD3.5
    layout (two joint blocks, the first with the second image attention, RMS q/k norms; no T5, as diffusers allows)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(0)
    if family == "flux":
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                             num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                             guidance_embeds=True, axes_dims_rope=(4, 6, 6))  # fmt: skip
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(1), text_encoder=clip_encoder(2, False),
                            tokenizer=clip_tokenizer(), text_encoder_2=t5_encoder(3), tokenizer_2=t5_tokenizer(), transformer=transformer)  # fmt: skip
    else:
        transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=32, num_attention_heads=2,
                                            joint_attention_dim=64, caption_projection_dim=64, pooled_projection_dim=64, out_channels=4,
                                            pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm")  # fmt: skip
        pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(1), text_encoder=clip_encoder(2, True),
                                        tokenizer=clip_tokenizer(), text_encoder_2=clip_encoder(3, True), tokenizer_2=clip_tokenizer(),
                                        text_encoder_3=None, tokenizer_3=None, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_pipelines")
    folders = {family: str(root / family) for family in ("flux", "sd3")}
    for family, folder in folders.items():
        tiny_pipeline(family, folder)
    return folders


MODEL = {"name": "diffusers", "dtype": "fp32", "device": "cpu", "resolution": 16, "max_sequence_length": 16}
TARGETS = {"flux": FLUX_LORA_TARGETS, "sd3": SD3_LORA_TARGETS}


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_denoiser_reproduces_the_pipelines_own_sampler(pipelines, family):
    """Deterministic DDIM on a flow model is the Euler step the pipelines take, so with the same start latent and no
    CFG our sampler through the adapter must land on the pipeline's latent: packing, ids, timestep scale, guidance
    input and the joint text embeddings are the pipeline's."""
    from diffusers import DiffusionPipeline

    from srrl_core.adapters.diffusers_transformer import pack_latents, unpack_latents

    policy = build_policy({**MODEL, "path": pipelines[family]}, steps=3)
    absent = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}
    pipe = DiffusionPipeline.from_pretrained(pipelines[family], local_files_only=True, **absent)
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    prompts = ["a red ball", "two blue cubes"]
    guided = ClassifierFreeGuidance(policy.denoiser, policy.encode(prompts), policy.negative, policy.parametrization)
    with torch.no_grad():
        ours = sample(guided, prior_latent(guided, noise, policy.sigmas[0]), policy.sigmas, scale=1.0).latent
        if family == "flux":
            theirs = pipe(prompts, latents=pack_latents(noise), height=16, width=16, num_inference_steps=3, guidance_scale=3.5,
                          max_sequence_length=16, output_type="latent").images  # fmt: skip
            theirs = unpack_latents(theirs, 8, 8)
        else:
            theirs = pipe(prompts, latents=noise, height=16, width=16, num_inference_steps=3, guidance_scale=1.0,
                          max_sequence_length=16, output_type="latent").images  # fmt: skip
    assert ours.abs().max() > 0.1
    # The same arithmetic in another order: float32 round-off (measured 4.8e-7 for both); the unshifted schedule
    # or Flux's guidance input at 1 instead of 3.5 moves the result by 0.12-0.16 (measured).
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_lora_target_lists_adapt_the_documented_layers(pipelines, family):
    policy = build_policy({**MODEL, "path": pipelines[family]}, steps=2)
    linear = {n for n, m in policy.network.named_modules() if isinstance(m, torch.nn.Linear)}
    add_lora(policy.network, targets=TARGETS[family])
    adapted = set(lora_layers(policy.network))
    for target in TARGETS[family]:  # every listed target exists in the architecture
        assert any(re.fullmatch(target_pattern([target]), name) for name in adapted), target
    untouched = {n for n in linear - adapted if not n.startswith(("time_text_embed", "context_embedder", "x_embedder"))}
    if family == "flux":
        assert untouched == {"transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear",
                             "single_transformer_blocks.0.norm.linear", "norm_out.linear", "proj_out"}  # fmt: skip
        assert {"single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out"} <= adapted
    else:
        assert untouched == {f"transformer_blocks.{i}.{m}" for i in (0, 1) for m in ("norm1.linear", "norm1_context.linear")} | {"norm_out.linear", "proj_out"}
        assert "transformer_blocks.0.attn2.to_q" in adapted
    remove_lora(policy.network)
    add_lora(policy.network)  # the trainer's default (to_q, to_k, to_v, to_out.0) exists in both transformers too
    assert {n.rsplit(".", 1)[-1] for n in lora_layers(policy.network)} >= {"to_q", "to_k", "to_v"}
    with pytest.raises(ValueError, match="key_style 'ldm' is for SD UNets"):
        export_lora(policy.network, os.devnull, key_style="ldm")


def run_cli(tmp_path, family, pipeline_path):
    targets = json.dumps(list(TARGETS[family]))
    config = tmp_path / f"{family}.toml"
    config.write_text(textwrap.dedent(f"""
        prompts = ["a red cube", "a blue sphere"]
        [model]
        name = "diffusers"
        path = "{pipeline_path}"
        dtype = "fp32"
        resolution = 16
        max_sequence_length = 16
        [reward]
        backend = "brightness_band"
        low = 1.0
        high = 1.0
        softness = 1.0
        [training]
        output_dir = "{tmp_path / 'run'}"
        lora_name = "srrl_{family}"
        steps = 4
        stages = 2
        prompts_per_stage = 2
        split_time = 2
        split_step_start = 1
        split_step_stride = 1
        curriculum_period = 2
        rounds_every = 1
        max_rounds = 1
        advantage_mode = "group"
        min_reward_gap = 0.0
        advantage_std_floor = 1e-6           # the tiny random VAE decodes nearly one brightness: do not damp its spread
        trajectories_per_update = 2
        micro_batch_size = 4
        learning_rate = 1e-2
        lora_targets = {targets}
        tensorboard = false
        progress = false
    """))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "srrl_core.train", "--config", str(config), "--cpu"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path / "run" / f"srrl_{family}.safetensors"


@pytest.fixture(scope="module")
def trained(pipelines, tmp_path_factory):
    return {family: run_cli(tmp_path_factory.mktemp(f"cli_{family}"), family, path) for family, path in pipelines.items()}


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_cli_trains_a_lora_on_a_flow_transformer(pipelines, trained, family):
    from safetensors.torch import load_file

    state = load_file(trained[family])
    policy = build_policy({**MODEL, "path": pipelines[family]}, steps=2)
    add_lora(policy.network, targets=TARGETS[family])
    modules = sorted(lora_layers(policy.network))
    prefixes = sorted({k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in state})
    assert prefixes == sorted("lora_transformer_" + m.replace(".", "_") for m in modules)
    for prefix in prefixes:
        assert {f"{prefix}.lora_down.weight", f"{prefix}.lora_up.weight", f"{prefix}.alpha"} <= set(state)
    # B starts at zero: a non-zero up matrix means the PPO updates moved the LoRA.
    assert max(state[f"{p}.lora_up.weight"].abs().max().item() for p in prefixes) > 0


HOST_SCRIPT = r"""
import json, sys, types
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.lora, comfy.model_base
from safetensors.torch import load_file
family, config, path = sys.argv_saved
base = {"flux": comfy.model_base.Flux, "sd3": comfy.model_base.SD3}[family]
class Model(base):  # only what model_lora_keys_unet reads: the class, the unet config, the state dict
    def __init__(self):
        self.model_config = types.SimpleNamespace(unet_config=json.loads(config))
    def state_dict(self):
        return {}
key_map = comfy.lora.model_lora_keys_unet(Model(), {})
lora = load_file(path)
prefixes = sorted({k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in lora})
patches = comfy.lora.load_lora(lora, key_map)
print(json.dumps({"modules": len(prefixes), "patches": len(patches), "unmapped": [p for p in prefixes if p not in key_map]}))
"""


@pytest.fixture(scope="module")
def comfy_host():
    """A ComfyUI checkout whose LoRA code knows Flux and SD3; resolved before ``trained`` (listed first) so a
    missing host skips without training."""
    from tests.helpers.hostlib import host_dir

    root = host_dir()
    model_base = root / "comfy" / "model_base.py"
    if not model_base.is_file():
        pytest.skip(f"no ComfyUI host at {root} (SRRL_COMFYUI_DIR)")
    if "class Flux(" not in model_base.read_text(encoding="utf-8"):
        pytest.skip(f"the ComfyUI at {root} predates Flux and SD3 LoRA key maps (the March-2024 host); point SRRL_COMFYUI_DIR at a current one")
    return root


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_every_exported_key_maps_in_comfyuis_lora_loader(comfy_host, trained, family):
    root = comfy_host
    # ComfyUI's detected unet_config for these checkpoints: Flux depth / single-block depth / width; SD3 depth.
    config = {"depth": 1, "depth_single_blocks": 1, "hidden_size": 32} if family == "flux" else {"depth": 2}
    script = HOST_SCRIPT.replace("sys.argv_saved", repr([family, json.dumps(config), str(trained[family])]))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["unmapped"] == []
    assert report["patches"] == report["modules"] > 0  # one patch per LoRA module: every key was loaded


def test_an_unsupported_model_family_fails_before_loading_anything(tmp_path):
    folder = tmp_path / "pixart"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "PixArtAlphaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }))  # no weights at all: the check must come first
    with pytest.raises(ValueError) as error:
        build_policy({**MODEL, "path": str(folder)}, steps=4)
    message = str(error.value)
    assert "PixArtAlphaPipeline" in message and "PixArtTransformer2DModel" in message
    for supported in ("UNet2DConditionModel", "FluxTransformer2DModel", "SD3Transformer2DModel"):
        assert supported in message


def test_flux_denoiser_refuses_other_transformers():
    with pytest.raises(ValueError, match="transformer must be one of"):
        DiffusersTransformerDenoiser(torch.nn.Linear(2, 2))
