"""Every shipped workflow: the UI and API files describe the same graph, and the API file runs headless on a
real ComfyUI server (shrunk to the tiny checkpoint, 64 px and a few steps); bad values fail at queue time.

The UI file's name is the title ComfyUI's template browser shows ("Train a LoRA and compare.json"); its API twin
is the same name in snake case under workflows/api/ ("train_a_lora_and_compare.json"), and its thumbnail the same
name with .jpg. SRRL_WRITE_THUMBNAILS=1 makes test_api_workflow_runs_headless write those thumbnails from the
images of its run (the tiny checkpoint's).

A workflow that uses a node type the host does not have (the flow-model workflow's ModelSamplingSD3 and
EmptySD3LatentImage on the March-2024 host) is skipped by the tests that need the host, naming the missing types."""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.hostlib import REPO, TINY_CKPT_NAME
from tests.helpers.workflow_format import normalise, ui_to_api

WORKFLOWS = REPO / "workflows"
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
SIZE = 64
THUMBNAIL = 512  # px, square, as the template browser's cards show them
_unique = itertools.count(1)


def api_name(ui_path: Path) -> str:
    """'Re-noise guide, stock samplers' -> 'renoise_guide_stock_samplers.json'."""
    return re.sub(r"[^a-z0-9]+", "_", ui_path.stem.lower().replace("-", "")).strip("_") + ".json"


def ui_twin(api_path: Path) -> Path:
    return next(p for p in UI_FILES if api_name(p) == api_path.name)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def missing_node_types(prompt: dict, object_info: dict) -> list[str]:
    return sorted({node["class_type"] for node in prompt.values()} - set(object_info))


def skip_unless_host_has_its_nodes(api_path: Path, object_info: dict) -> None:
    missing = missing_node_types(load(api_path), object_info)
    if missing:
        pytest.skip(f"{api_path.name}: this ComfyUI host has no node type {', '.join(missing)} (current ComfyUI has; "
                    "see tests/host/install_current_comfyui.md)")


def literal(value) -> bool:
    return not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str))


def shrink(prompt: dict) -> dict:
    """The tiny checkpoint, 64 px, <= 4 steps (the same everywhere, so step indices still line up), fresh seeds and
    file prefixes so the server's cache cannot answer."""
    prompt = copy.deepcopy(prompt)
    run = next(_unique)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = TINY_CKPT_NAME
        if node["class_type"] == "EmptySD3LatentImage":  # 16 channels (SD3, Flux); the tiny checkpoint's latents have 4
            node["class_type"] = "EmptyLatentImage"  # the same inputs (width, height, batch_size)
        for key in ("width", "height"):  # EmptyLatentImage, the LoRA Trainer's samples
            if key in inputs and literal(inputs[key]):
                inputs[key] = SIZE
        if "steps" in inputs and literal(inputs["steps"]):
            inputs["steps"] = min(inputs["steps"], 4)
        for key in ("seed", "noise_seed"):
            if key in inputs and literal(inputs[key]):
                inputs[key] = inputs[key] + 1000 * run
        for key in ("filename_prefix", "lora_name"):  # a LoRA of its own, in the host's loras folder
            if key in inputs and literal(inputs[key]):
                inputs[key] = f"ci_{run}_{inputs[key].replace('/', '_')}"
    return prompt


def test_every_workflow_ships_in_both_formats_with_a_thumbnail():
    assert API_FILES, "no API-format workflows under workflows/api"
    assert sorted(api_name(p) for p in UI_FILES) == [p.name for p in API_FILES]
    for ui_path in UI_FILES:
        assert ui_path.stem != api_name(ui_path)[:-5], f"{ui_path.name}: the file name is the template title; make it readable"
        with Image.open(ui_path.with_suffix(".jpg")) as thumbnail:  # the template browser asks for <name>.jpg
            assert thumbnail.format == "JPEG" and min(thumbnail.size) >= 128


def test_every_node_of_the_pack_is_in_a_shipped_workflow(comfy_server):
    object_info = comfy_server.object_info()
    pack = {name for name, info in object_info.items() if info.get("category") == "SRRL"}
    deprecated = {name for name in pack if "deprecated" in object_info[name]["display_name"].lower()}
    used = {node["class_type"] for path in API_FILES for node in load(path).values()}
    # the per-family reward loaders other than the ones shipped are covered by tests/rewards/test_nodes.py
    core = {"SRRLReflectiveSampler", "SRRLRenoiseGuide", "SRRLRewardScorer", "SRRLLoRATrainer"}
    assert core <= pack and core <= used, core - used
    assert any(name.startswith("SRRLReward") and name not in deprecated and name != "SRRLRewardScorer" for name in used)
    assert not used & deprecated, f"shipped workflows use deprecated nodes: {used & deprecated}"


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.stem)
def test_ui_and_api_formats_describe_the_same_graph(comfy_server, api_path):
    object_info = comfy_server.object_info()
    skip_unless_host_has_its_nodes(api_path, object_info)
    ui = load(ui_twin(api_path))
    assert normalise(ui_to_api(ui, object_info)) == normalise(load(api_path))
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert notes and "model calls" in notes[0]["widgets_values"][0], "the UI workflow's note must state its cost"


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_runs_headless(comfy_server, api_path, tmp_path):
    skip_unless_host_has_its_nodes(api_path, comfy_server.object_info())
    prompt = shrink(load(api_path))
    _, entry, files = comfy_server.run_workflow(prompt, timeout=600, out_dir=tmp_path)
    assert entry["status"]["status_str"] == "success"
    saves = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    for node_id in saves:
        images = entry["outputs"][node_id]["images"]
        assert images, f"SaveImage {node_id} wrote nothing"
    assert len(files) >= len(saves)
    for path in files:
        with Image.open(path) as image:
            assert image.size == (SIZE, SIZE)
    for node_id, node in prompt.items():  # a score in the file name: filename_prefix from the Reward Scorer
        prefix = node["inputs"].get("filename_prefix") if node["class_type"] == "SaveImage" else None
        if not literal(prefix) and prompt[prefix[0]]["class_type"] == "SRRLRewardScorer":
            name = entry["outputs"][node_id]["images"][0]["filename"]
            match = re.search(r"_score_(-?\d+\.\d{4})_", name)
            assert match, f"no score in the saved file name {name!r}"
            assert 0.0 <= float(match.group(1)) <= 1.0  # the shipped reward is a verifier: scores in [0, 1]
    for node_id, node in prompt.items():
        if node["class_type"] == "SRRLLoRATrainer":
            stages = node["inputs"]["stages"]
            assert f"{stages} stage(s) run" in entry["outputs"][node_id]["text"][0]
            lora = comfy_server.host_dir / "models" / "loras" / f"{node['inputs']['lora_name']}.safetensors"
            assert lora.is_file()
            lora.unlink()  # the host folder is shared between sessions
    for node_id, node in prompt.items():  # before and after, side by side: one batch of two images
        if node["class_type"] == "ImageBatch":
            saved = [i for i, n in prompt.items() if n["class_type"] == "SaveImage" and n["inputs"]["images"][0] == node_id]
            assert saved and all(len(entry["outputs"][i]["images"]) == 2 for i in saved)
    if os.environ.get("SRRL_WRITE_THUMBNAILS", "").strip() == "1":
        write_thumbnail(files, ui_twin(api_path).with_suffix(".jpg"))
    for node_id, node in prompt.items():
        if node["class_type"] == "SRRLReflectiveSampler":
            report = entry["outputs"][node_id]["text"][0]
            rounds = node["inputs"]["rounds"]
            assert f"({rounds} reflective rounds)" in report
            assert [line.split(":")[0] for line in report.splitlines() if line.startswith("round ")] == [
                f"round {k}" for k in range(rounds + 1)
            ]
    for node_id, node in prompt.items():  # the round report picture reaches the canvas (a Preview Image)
        if node["class_type"] == "PreviewImage" and prompt[node["inputs"]["images"][0]]["class_type"] == "SRRLReflectiveSampler":
            assert entry["outputs"][node_id]["images"], f"PreviewImage {node_id} shows no round report"


@pytest.mark.parametrize(
    "class_type, field, value",
    [("SRRLReflectiveSampler", "rounds", -1), ("SRRLReflectiveSampler", "branches", 0),
     ("SRRLRenoiseGuide", "renoise_strength", 2.0), ("SRRLReflectiveSampler", "renoise_strength", 2.0)],
)
def test_out_of_range_values_are_node_errors_at_queue_time(comfy_server, class_type, field, value):
    object_info = comfy_server.object_info()
    path = next((p for p in API_FILES if any(n["class_type"] == class_type for n in load(p).values())
                 and not missing_node_types(load(p), object_info)), None)
    if path is None:
        pytest.fail(f"no shipped workflow this host can run uses {class_type}")
    prompt = shrink(load(path))
    node_id = next(i for i, n in prompt.items() if n["class_type"] == class_type)
    prompt[node_id]["inputs"][field] = value
    status, body = comfy_server.post_json("/prompt", {"prompt": prompt})
    # 400 when no output can run; 200 when outputs that do not depend on the bad node are still queued.
    assert status in (200, 400) and node_id in body["node_errors"], body
    errors = body["node_errors"][node_id]["errors"]
    assert any(field in json.dumps(error) for error in errors), errors
    assert comfy_server.alive()


def write_thumbnail(paths, target: Path) -> None:
    """The run's images in a square grid (nearest-neighbour upscaled), as the template card's picture."""
    images = [Image.open(p).convert("RGB") for p in sorted(paths)][:16]
    columns = 1 if len(images) == 1 else 2 if len(images) <= 4 else 4
    rows = -(-len(images) // columns)
    tile = THUMBNAIL // max(columns, rows)
    sheet = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (24, 24, 24))
    left, top = (THUMBNAIL - columns * tile) // 2, (THUMBNAIL - rows * tile) // 2
    for i, image in enumerate(images):
        sheet.paste(image.resize((tile, tile), Image.NEAREST), (left + i % columns * tile, top + i // columns * tile))
    sheet.save(target, "JPEG", quality=88)
