"""Live previews and progress: the sampler nodes report every model call to the host's preview/progress callback,
as a stock KSampler reports every step, and the server forwards them as websocket progress messages and binary
preview frames."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
import torch
from PIL import Image

from srrl_core.sampling import planned_model_calls

from tests.helpers.hostlib import TINY_CKPT_NAME, watch_prompt
from tests.helpers.nodes import sampler_args

STEPS = 3


@pytest.fixture
def host_progress(comfy_inprocess):
    """(pack, records): latent2rgb previews switched on and the host's progress-bar hook recording
    (value, total, preview) in this process; both restored afterwards."""
    utils = comfy_inprocess.import_module("comfy.utils")
    cli_args = comfy_inprocess.import_module("comfy.cli_args")
    records = []
    saved_method, saved_hook = cli_args.args.preview_method, utils.PROGRESS_BAR_HOOK
    cli_args.args.preview_method = cli_args.LatentPreviewMethod.Latent2RGB
    utils.set_progress_bar_global_hook(lambda value, total, preview, *_, **__: records.append((value, total, preview)))
    try:
        yield comfy_inprocess.load_pack(), records
    finally:
        cli_args.args.preview_method = saved_method
        utils.set_progress_bar_global_hook(saved_hook)


def test_reflective_sampler_reports_every_model_call_with_a_preview(comfy_inprocess, host_progress):
    pack, records = host_progress
    inproc = comfy_inprocess
    pos, neg = inproc.encode("a ball rolling down a ramp"), inproc.encode("")
    with torch.inference_mode():
        final, _, report, _ = pack.nodes.reflective_sampler.ReflectiveSampler().sample(
            inproc.model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, **sampler_args(steps=STEPS, rounds=2)
        )["result"]
    calls = planned_model_calls(STEPS, 2, 1.0)
    assert f"{calls} model calls" in report
    # One bar, advanced once per model call: a second bar (or a second update per call) would repeat values.
    assert [(value, total) for value, total, _ in records] == [(i + 1, calls) for i in range(calls)]
    assert all(preview is not None and preview[0] == "JPEG" for _, _, preview in records)
    # The last call's x0 is the final result (DDIM's last step lands on it): its preview is that latent's.
    latent_preview = inproc.import_module("latent_preview")
    previewer = latent_preview.get_previewer(inproc.model.load_device, inproc.model.model.latent_format)
    expected = np.asarray(previewer.decode_latent_to_preview(inproc.model.model.process_latent_in(final["samples"])))
    shown = np.asarray(records[-1][2][1])
    assert shown.shape == expected.shape == (8, 8, 3)
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1


def test_renoise_guide_reports_every_model_call_with_a_preview(comfy_inprocess, host_progress):
    pack, records = host_progress
    inproc = comfy_inprocess
    pos, neg = inproc.encode("a glass of water"), inproc.encode("")
    clean = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    with torch.inference_mode():
        pack.nodes.renoise_guide.RenoiseGuide().renoise(
            inproc.model, pos, neg, clean, steps=6, scheduler="normal", inversion_cfg=0.1, renoise_strength=0.5
        )
    assert [(value, total) for value, total, _ in records] == [(1, 3), (2, 3), (3, 3)]
    assert all(preview is not None for _, _, preview in records)


def _preview_prompt(seed: int) -> dict:
    """Reflective Sampler (2 rounds) -> Re-noise Guide, each decoded into a PreviewImage."""
    text = {"clip": ["1", 1]}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a ball on a ramp", **text}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", **text}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "SRRLReflectiveSampler", "inputs": {
            **sampler_args(seed=seed, steps=STEPS, rounds=2),
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "SRRLRenoiseGuide", "inputs": {
            "steps": 4, "scheduler": "normal", "inversion_cfg": 0.1, "renoise_strength": 1.0,
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def test_websocket_carries_progress_and_preview_frames(comfy_server):
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    progress, frames = watch_prompt(comfy_server, _preview_prompt(seed=int(time.time())))
    sampler_calls = planned_model_calls(STEPS, 2, 1.0)
    assert [p for p in progress if p[0] == "5"] == [("5", i + 1, sampler_calls) for i in range(sampler_calls)]
    assert [p for p in progress if p[0] == "6"] == [("6", i + 1, 4) for i in range(4)]
    # One binary frame per model call: event 1 (PREVIEW_IMAGE) + image type 1 (JPEG) + the square latent2rgb
    # preview of the 8 x 8 latent, scaled by the server to its preview size. Current ComfyUI sends the same legacy
    # frame to clients that did not announce its preview-metadata feature.
    assert len(frames) == sampler_calls + 4
    for frame in frames:
        event, image_type = struct.unpack(">II", frame[:8])
        assert (event, image_type) == (1, 1)
        with Image.open(io.BytesIO(frame[8:])) as image:
            assert image.format == "JPEG" and image.width == image.height >= 8
