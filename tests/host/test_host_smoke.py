"""The host itself works with the tiny checkpoint: detection, in-process loading, a stock workflow over HTTP."""
from __future__ import annotations

import os

import pytest

from tests.helpers import hostlib


def _png_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.format, im.size


def test_tiny_checkpoint_is_sd15(comfy_inprocess, tiny_checkpoint):
    from safetensors import safe_open

    assert comfy_inprocess.model_config_name == "SD15"
    model, clip, vae = comfy_inprocess
    assert type(model.model).__name__ == "BaseModel"
    assert model.model.model_type.name == "EPS"
    assert type(vae.first_stage_model).__name__ == "TAESD"
    assert clip is not None

    # Every tensor the host's UNet owns is in the file, and nothing else under the UNet prefix.
    prefix = "model.diffusion_model."
    with safe_open(str(tiny_checkpoint), framework="pt") as f:
        keys = set(f.keys())
    ours = {k[len(prefix):] for k in keys if k.startswith(prefix)}
    assert ours == set(model.model.diffusion_model.state_dict().keys())
    # ... and every tensor of the text encoder, except the projection ComfyUI sets to the identity itself.
    clip_keys = {k.replace("cond_stage_model.", "clip_l.", 1) for k in keys if k.startswith("cond_stage_model.")}
    theirs = set(clip.cond_stage_model.state_dict().keys()) - {"clip_l.transformer.text_projection.weight"}
    assert theirs <= clip_keys
    vae_keys = {k[len("first_stage_model."):] for k in keys if k.startswith("first_stage_model.")}
    assert set(vae.first_stage_model.state_dict().keys()) <= vae_keys


def test_inprocess_encode_and_decode(comfy_inprocess):
    import torch

    cond = comfy_inprocess.encode("a red ball")
    assert cond[0][0].shape == (1, 77, 768)
    assert torch.isfinite(cond[0][0]).all()
    with torch.inference_mode():
        images = comfy_inprocess.vae.decode(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert images.shape == (1, 64, 64, 3)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert float(images.std()) > 0.01  # the decoder is not a flat grey


def test_stock_workflow_over_http(comfy_server, stock_workflow, tmp_path):
    prompt_id, entry, paths = comfy_server.run_workflow(stock_workflow, timeout=300, out_dir=tmp_path)
    assert entry["status"]["status_str"] == "success"
    images = entry["outputs"]["9"]["images"]
    assert len(images) == 1 and images[0]["type"] == "output"
    saved = comfy_server.output_dir / images[0].get("subfolder", "") / images[0]["filename"]
    assert saved.is_file()
    assert _png_size(saved) == ("PNG", (64, 64))
    assert len(paths) == 1 and _png_size(paths[0]) == ("PNG", (64, 64))


def test_object_info_has_stock_nodes(comfy_server):
    info = comfy_server.object_info("KSampler")
    required = info["KSampler"]["input"]["required"]
    assert "euler" in required["sampler_name"][0]


@pytest.mark.skipif(not (hostlib.REPO / "__init__.py").is_file(), reason="the pack has no __init__.py yet")
def test_pack_imports_in_host(comfy_server):
    log = comfy_server.log_text()
    assert f"Cannot import {os.path.join(str(comfy_server.host_dir), 'custom_nodes', hostlib.PACK_LINK_NAME)}" \
        not in log, log[-4000:]
    assert hostlib.PACK_LINK_NAME in log  # listed under "Import times for custom nodes"


def test_inprocess_extra_nodes(comfy_inprocess):
    mapping = comfy_inprocess.load_extra_nodes(["nodes_custom_sampler"])
    assert "SamplerCustom" in mapping and "KSampler" in mapping
    assert mapping is comfy_inprocess.nodes().NODE_CLASS_MAPPINGS
