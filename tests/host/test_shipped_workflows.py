"""Every shipped workflow: the UI and API files describe the same graph, and the API file runs headless on a
real ComfyUI server (shrunk to the tiny checkpoint, 64 px and a few steps); bad values fail at queue time."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from .hostlib import REPO, TINY_CKPT_NAME
from .workflow_format import normalise, ui_to_api

WORKFLOWS = REPO / "workflows"
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))
SIZE = 64
_unique = itertools.count(1)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


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
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=SIZE, height=SIZE)
        if "steps" in inputs and literal(inputs["steps"]):
            inputs["steps"] = min(inputs["steps"], 4)
        for key in ("seed", "noise_seed"):
            if key in inputs and literal(inputs[key]):
                inputs[key] = inputs[key] + 1000 * run
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = f"ci_{run}_{inputs['filename_prefix'].replace('/', '_')}"
    return prompt


def test_every_workflow_ships_in_both_formats():
    assert API_FILES, "no API-format workflows under workflows/api"
    ui_files = sorted(p.name for p in WORKFLOWS.glob("*.json"))
    assert ui_files == [p.name for p in API_FILES]


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.stem)
def test_ui_and_api_formats_describe_the_same_graph(comfy_server, api_path):
    object_info = comfy_server.object_info()
    ui = load(WORKFLOWS / api_path.name)
    assert normalise(ui_to_api(ui, object_info)) == normalise(load(api_path))


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_runs_headless(comfy_server, api_path, tmp_path):
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
     ("SRRLRenoiseGuide", "strength", 2.0), ("SRRLReflectiveSampler", "renoise_strength", 2.0)],
)
def test_out_of_range_values_are_node_errors_at_queue_time(comfy_server, class_type, field, value):
    path = next((p for p in API_FILES if any(n["class_type"] == class_type for n in load(p).values())), None)
    if path is None:
        pytest.fail(f"no shipped workflow uses {class_type}")
    prompt = shrink(load(path))
    node_id = next(i for i, n in prompt.items() if n["class_type"] == class_type)
    prompt[node_id]["inputs"][field] = value
    status, body = comfy_server.post_json("/prompt", {"prompt": prompt})
    # 400 when no output can run; 200 when outputs that do not depend on the bad node are still queued.
    assert status in (200, 400) and node_id in body["node_errors"], body
    errors = body["node_errors"][node_id]["errors"]
    assert any(field in json.dumps(error) for error in errors), errors
    assert comfy_server.alive()
