"""The LoRA Trainer node end to end in the real host: in-process, then over HTTP with the stock LoraLoader."""

from __future__ import annotations

import io
import json
import os
import struct
import time

import numpy as np
import pytest
import torch
from PIL import Image

from srrl_core.rewards.base import Reward

from tests.helpers.hostlib import TINY_CKPT_NAME, watch_prompt


class Brightness(Reward):
    name = "brightness"

    def _score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


TRAIN_ARGS = {
    "prompts": "a bright sky\na dark cave", "width": 64, "height": 64, "stages": 2, "prompts_per_stage": 2, "steps": 4,
    "scheduler": "ddim_uniform", "split_time": 2, "max_rounds": 1, "reflection_cfg": 3.0, "rollout_cfg": 5.0, "inversion_cfg": 0.1,
    "learning_rate": 1e-3, "lora_rank": 4, "lora_alpha": 4.0, "seed": 300, "resume": False,
}  # fmt: skip


def test_trainer_node_writes_a_lora_the_host_loads(comfy_inprocess):
    pack = comfy_inprocess.load_pack()
    import folder_paths
    from safetensors.torch import load_file

    node = pack.nodes.lora_trainer.LoRATrainer()
    model = comfy_inprocess.model
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    with torch.inference_mode():
        out = node.train(model, comfy_inprocess.clip, comfy_inprocess.vae, Brightness(), lora_name="srrl_test_inproc", **TRAIN_ARGS)
    trained, name, curves = out["result"]
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], name)
    tensors = load_file(path)
    downs = [k for k in tensors if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("lora_unet_") for k in tensors)
    assert any("input_blocks_1_1_transformer_blocks_0_attn1_to_q" in k for k in downs)
    assert curves.shape[0] == 1 and curves.shape[-1] == 3
    # The host's own model is the base model again: same module tree, same weights.
    after = model.model.diffusion_model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert len(trained.patches) > 0  # the returned MODEL carries the LoRA as host patches


def test_bad_trainer_inputs(comfy_inprocess):
    pack = comfy_inprocess.load_pack()
    node = pack.nodes.lora_trainer.LoRATrainer()
    args = TRAIN_ARGS | {"prompts": "  \n"}
    with torch.inference_mode(), pytest.raises(ValueError, match="prompts: give at least one training prompt"):
        node.train(comfy_inprocess.model, comfy_inprocess.clip, comfy_inprocess.vae, Brightness(), lora_name="x", **args)
    with torch.inference_mode(), pytest.raises(ValueError, match="lora_name must be"):
        node.train(comfy_inprocess.model, comfy_inprocess.clip, comfy_inprocess.vae, Brightness(),
                   lora_name="../escape", **TRAIN_ARGS)


def sample_prompt(lora_name=None, strength=0.0, prefix="lora_check", flow_shift=None):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bright sky", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"seed": 11, "steps": 4, "cfg": 5.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
              "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["6", 0]}},
    }  # fmt: skip
    if lora_name is not None:
        prompt["8"] = {"class_type": "LoraLoader", "inputs": {"lora_name": lora_name, "strength_model": strength,
                       "strength_clip": 0.0, "model": ["1", 0], "clip": ["1", 1]}}  # fmt: skip
        prompt["5"]["inputs"]["model"] = ["8", 0]
    if flow_shift is not None:  # rectified flow: the stock ModelSamplingSD3 patch between the model and the sampler
        prompt["9"] = {"class_type": "ModelSamplingSD3", "inputs": {"shift": flow_shift, "model": prompt["5"]["inputs"]["model"]}}
        prompt["5"]["inputs"]["model"] = ["9", 0]
    return prompt


def pixels(server, prompt, tmp_path):
    _, entry, files = server.run_workflow(prompt, timeout=600, out_dir=tmp_path)
    assert entry["status"]["status_str"] == "success"
    with Image.open(files[0]) as image:
        return np.asarray(image).astype(np.int16)


@pytest.mark.parametrize("flow_shift", [None, 3.0], ids=["eps", "flow"])
def test_trainer_workflow_then_stock_lora_loader(comfy_server, tmp_path, flow_shift):
    """Train over HTTP, then sample through the stock LoraLoader: strength 0 is the base model, 1 differs. The flow
    case trains and samples the checkpoint patched to rectified flow by ModelSamplingSD3 (current ComfyUI)."""
    if flow_shift is not None and "ModelSamplingSD3" not in comfy_server.object_info():
        pytest.skip("this ComfyUI host has no ModelSamplingSD3 (the March-2024 host): no flow models to train")
    name = "srrl_ci_http" if flow_shift is None else "srrl_ci_http_flow"
    train = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "2": {"class_type": "SRRLRewardModelLoader", "inputs": {"backend": "brightness_band", "weights": "none",
              "aux_file": "none", "clip_architecture": "ViT-H-14", "vlm_endpoint": "", "vlm_model": "",
              "api_key_env": "", "rule": "", "on_failure": "raise", "fallback_score": 0.0, "device": "auto",
              "dtype": "auto", "options": json.dumps({"low": 0.9, "high": 1.0, "softness": 1.0})}},
        "3": {"class_type": "SRRLLoRATrainer", "inputs": {**TRAIN_ARGS, "lora_name": name, "model": ["1", 0],
              "clip": ["1", 1], "vae": ["1", 2], "reward": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "srrl_ci_curves", "images": ["3", 2]}},
    }  # fmt: skip
    if flow_shift is not None:
        train["5"] = {"class_type": "ModelSamplingSD3", "inputs": {"shift": flow_shift, "model": ["1", 0]}}
        train["3"]["inputs"]["model"] = ["5", 0]
    _, entry, _ = comfy_server.run_workflow(train, timeout=900, out_dir=tmp_path / "train")
    assert entry["status"]["status_str"] == "success"
    lora = f"{name}.safetensors"
    assert lora in comfy_server.object_info("LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
    base = pixels(comfy_server, sample_prompt(prefix="base", flow_shift=flow_shift), tmp_path / "base")
    zero = pixels(comfy_server, sample_prompt(lora, 0.0, "zero", flow_shift), tmp_path / "zero")
    full = pixels(comfy_server, sample_prompt(lora, 1.0, "full", flow_shift), tmp_path / "full")
    assert np.array_equal(zero, base)
    assert np.abs(full - base).max() > 0


def test_cancel_keeps_the_last_good_lora(comfy_inprocess):
    pack = comfy_inprocess.load_pack()
    import folder_paths

    management = comfy_inprocess.import_module("comfy.model_management")

    class CancelOnSecondStage(Brightness):
        calls = 0

        def _score(self, images, prompts):
            CancelOnSecondStage.calls += 1
            if CancelOnSecondStage.calls == 2:  # Cancel pressed while stage 1 is being scored
                management.interrupt_current_processing(True)
            return super()._score(images, prompts)

    path = os.path.join(folder_paths.get_folder_paths("loras")[0], "srrl_test_cancel.safetensors")
    if os.path.exists(path):
        os.remove(path)
    node = pack.nodes.lora_trainer.LoRATrainer()
    with torch.inference_mode(), pytest.raises(management.InterruptProcessingException):
        node.train(comfy_inprocess.model, comfy_inprocess.clip, comfy_inprocess.vae, CancelOnSecondStage(),
                   lora_name="srrl_test_cancel", **(TRAIN_ARGS | {"stages": 3}))  # fmt: skip
    assert os.path.isfile(path)  # written from the weights after the last completed update
    assert not any(".lora_" in name for name, _ in comfy_inprocess.model.model.diffusion_model.named_parameters())


def test_each_stage_sends_its_best_sample_to_the_canvas(comfy_inprocess):
    pack = comfy_inprocess.load_pack()
    utils = comfy_inprocess.import_module("comfy.utils")
    judged = []  # (images, scores) of every reward call, in order

    class Recording(Brightness):
        def _score(self, images, prompts):
            scores = super()._score(images, prompts)
            judged.append((images.clone(), scores.clone()))
            return scores

    records, saved_hook = [], utils.PROGRESS_BAR_HOOK
    utils.set_progress_bar_global_hook(lambda value, total, preview, *_, **__: records.append((value, total, preview)))
    try:
        with torch.inference_mode():
            out = pack.nodes.lora_trainer.LoRATrainer().train(
                comfy_inprocess.model, comfy_inprocess.clip, comfy_inprocess.vae, Recording(),
                lora_name="srrl_test_previews", **TRAIN_ARGS)  # fmt: skip
    finally:
        utils.set_progress_bar_global_hook(saved_hook)
    import folder_paths

    os.remove(os.path.join(folder_paths.get_folder_paths("loras")[0], out["result"][1]))
    stages = TRAIN_ARGS["stages"]
    bar = [(value, total, preview) for value, total, preview in records if total == stages]
    assert [(value, total) for value, total, _ in bar] == [(n + 1, stages) for n in range(stages)]
    # Stages this short have no reflective round: each stage's reward calls score only its finished samples
    # (prompts_per_stage x split_time of them), and the preview is the best of those.
    per_stage = TRAIN_ARGS["prompts_per_stage"] * TRAIN_ARGS["split_time"]
    images = torch.cat([i for i, _ in judged])
    scores = torch.cat([s for _, s in judged])
    assert images.shape[0] == stages * per_stage
    for stage, (_, _, preview) in enumerate(bar):
        kind, picture, max_size = preview
        assert kind == "JPEG" and max_size >= 64 and picture.size == (TRAIN_ARGS["width"], TRAIN_ARGS["height"])
        rows = slice(stage * per_stage, (stage + 1) * per_stage)
        best = images[rows][int(scores[rows].argmax())]
        expected = (best.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(np.asarray(picture), expected)


def test_stage_previews_reach_the_websocket(comfy_server):
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    train = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "2": {"class_type": "SRRLRewardVerifier", "inputs": {"verifier": "brightness_band",
              "parameters": json.dumps({"low": 1.0, "high": 1.0, "softness": 1.0})}},
        "3": {"class_type": "SRRLLoRATrainer", "inputs": {**TRAIN_ARGS, "seed": int(time.time()) % 100000,
              "lora_name": "srrl_ci_previews", "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "reward": ["2", 0]}},
    }  # fmt: skip
    progress, frames = watch_prompt(comfy_server, train)
    stages = TRAIN_ARGS["stages"]
    assert [p for p in progress if p[0] == "3"] == [("3", n + 1, stages) for n in range(stages)]
    assert len(frames) == stages  # one preview per stage: the trainer's own sampling sends none
    for frame in frames:
        event, image_type = struct.unpack(">II", frame[:8])
        assert (event, image_type) == (1, 1)  # PREVIEW_IMAGE, JPEG
        with Image.open(io.BytesIO(frame[8:])) as image:
            # the 64 px sample, scaled by the server to its preview size (both hosts)
            assert image.format == "JPEG" and image.width == image.height >= TRAIN_ARGS["width"]
    (comfy_server.host_dir / "models" / "loras" / "srrl_ci_previews.safetensors").unlink(missing_ok=True)
