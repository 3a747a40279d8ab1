"""The headless client (srrl_core.headless): offline parts (overrides, names, downloads from a fake server, the
command-line entry points) and against the real ComfyUI server (the stock SD1.5 workflow on the tiny checkpoint)."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from srrl_core import headless as client
from tests.helpers import hostlib


def _png(path):
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        return im.format, im.size, im.tobytes()


def _write(tmp_path, prompt, name="wf.json"):
    path = tmp_path / name
    path.write_text(json.dumps(prompt))
    return str(path)


def _drain_queue(server, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = server.get_json("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return
        time.sleep(0.2)
    raise AssertionError("the server queue did not drain")


# --- offline --------------------------------------------------------------------------------------------

def test_seed_rounds_and_set_overrides(stock_workflow):
    wf = dict(stock_workflow)
    wf["10"] = {"class_type": "SamplerCustom", "inputs": {"noise_seed": 1, "cfg": 1.0, "model": ["4", 0]}}
    wf["11"] = {"class_type": "SRRLFake", "inputs": {"rounds": 2, "seed": ["12", 0]}}  # a linked seed
    out = client.apply_overrides(wf, seed=42, rounds=5,
                                 sets=["3.steps=7", "3.cfg=2.5", "5.width=128", "9.filename_prefix=run 1",
                                       "3.denoise=1", "11.extra=[1, 2]"])
    assert out["3"]["inputs"]["seed"] == 42 and out["10"]["inputs"]["noise_seed"] == 42
    assert out["11"]["inputs"]["seed"] == ["12", 0]  # links are left alone
    assert out["11"]["inputs"]["rounds"] == 5
    assert out["3"]["inputs"]["steps"] == 7 and isinstance(out["3"]["inputs"]["steps"], int)
    assert out["3"]["inputs"]["cfg"] == 2.5
    assert out["3"]["inputs"]["denoise"] == 1.0 and isinstance(out["3"]["inputs"]["denoise"], float)
    assert out["5"]["inputs"]["width"] == 128
    assert out["9"]["inputs"]["filename_prefix"] == "run 1"
    assert out["11"]["inputs"]["extra"] == [1, 2]
    assert stock_workflow["3"]["inputs"]["seed"] == 0  # the input is not modified


def test_override_errors(stock_workflow):
    with pytest.raises(client.OverrideError, match="no node '99'"):
        client.apply_overrides(stock_workflow, sets=["99.steps=3"])
    with pytest.raises(client.OverrideError, match="expected an integer"):
        client.apply_overrides(stock_workflow, sets=["3.steps=many"])
    with pytest.raises(client.OverrideError, match="NODE_ID.INPUT=VALUE"):
        client.apply_overrides(stock_workflow, sets=["3steps=2"])
    with pytest.raises(client.OverrideError, match="no rounds input"):
        client.apply_overrides(stock_workflow, rounds=3)
    with pytest.raises(client.UsageError, match="UI workflow"):
        client.apply_overrides({"nodes": [], "links": []})


def test_prompt_goes_to_the_positive_encoder(stock_workflow):
    out = client.apply_overrides(stock_workflow, prompt_text="a balance tilting to the heavier side")
    assert out["6"]["inputs"]["text"] == "a balance tilting to the heavier side"
    assert out["7"]["inputs"]["text"] == "blurry"


def test_prompt_through_conditioning_nodes(stock_workflow):
    wf = dict(stock_workflow)
    # negative listed first and wired through a node that has both positive and negative in- and outputs
    wf["20"] = {"class_type": "ControlNetApplyAdvanced",
                "inputs": {"positive": ["21", 0], "negative": ["7", 0], "strength": 1.0}}
    wf["21"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0],
                                                                "conditioning_2": ["22", 0]}}
    wf["22"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "second", "clip": ["4", 1]}}
    wf["3"] = dict(wf["3"], inputs=dict(wf["3"]["inputs"], positive=["20", 0], negative=["20", 1]))
    assert client.positive_text_nodes(wf) == ["6", "22"]
    out = client.apply_overrides(wf, prompt_text="P")
    assert (out["6"]["inputs"]["text"], out["22"]["inputs"]["text"], out["7"]["inputs"]["text"]) == \
        ("P", "P", "blurry")


def test_safe_filename():
    assert client.safe_filename("../../etc/passwd") == "passwd"
    assert client.safe_filename("..\\..\\x.png") == "x.png"
    assert client.safe_filename(".hidden") == "hidden"
    assert client.safe_filename("a b/c?d.png") == "c_d.png"
    assert client.safe_filename("..") == "output"
    assert client.safe_filename("ComfyUI_00001_.png") == "ComfyUI_00001_.png"


class _FakeView(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        body = ("|".join(q.get(k, [""])[0] for k in ("filename", "subfolder", "type"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_download_stays_inside_out_dir(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeView)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        entry = {"outputs": {"9": {"images": [
            {"filename": "../../escape.png", "subfolder": "../..", "type": "output"},
            {"filename": "/abs/path.png", "subfolder": "", "type": "output"},
            {"filename": "same.png", "subfolder": "a", "type": "output"},
            {"filename": "same.png", "subfolder": "b", "type": "output"},
            {"filename": "preview.png", "subfolder": "", "type": "temp"},
        ], "text": ["not a file"]}}}
        out = tmp_path / "out"
        paths = client.download_outputs(f"127.0.0.1:{srv.server_address[1]}", entry, out)
    finally:
        srv.shutdown()
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["escape.png", "path.png", "same-1.png", "same.png"]
    assert all(os.path.dirname(p) == str(out) for p in paths)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert (out / "escape.png").read_bytes() == b"../../escape.png|../..|output"


def test_unreachable_server_exit_code(tmp_path, stock_workflow, capsys):
    port = hostlib.free_port()
    rc = client.main([_write(tmp_path, stock_workflow), "--server", f"127.0.0.1:{port}", "--timeout", "5",
                      "--out", str(tmp_path / "o")])
    assert rc == client.EXIT_CONNECTION
    assert "cannot reach ComfyUI" in capsys.readouterr().err


def test_bad_workflow_file_exit_code(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    assert client.main([str(path)]) == client.EXIT_USAGE
    assert "not valid JSON" in capsys.readouterr().err


def _python(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_module_entry_point_and_the_old_script_path(tmp_path, stock_workflow):
    help_text = _python("-m", "srrl_core.headless", "--help", cwd=hostlib.REPO)
    assert help_text.returncode == 0 and "--server" in help_text.stdout and "Exit codes" in help_text.stdout
    # The documented script path works from any working directory and runs the same command line.
    script = _python(str(hostlib.REPO / "workflows" / "run_headless.py"), _write(tmp_path, stock_workflow),
                     "--dry-run", "--seed", "77", "-q", cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    assert json.loads(script.stdout)["3"]["inputs"]["seed"] == 77
    bad = _python(str(hostlib.REPO / "workflows" / "run_headless.py"), str(tmp_path / "missing.json"), cwd=tmp_path)
    assert bad.returncode == client.EXIT_USAGE and "cannot read workflow" in bad.stderr


def test_the_client_needs_only_the_standard_library():
    probe = ("import sys, srrl_core.headless; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'comfy', 'PIL', 'websocket'}))")
    out = _python("-c", probe, cwd=hostlib.REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- against the real server ----------------------------------------------------------------------------

def test_cli_runs_stock_workflow_with_overrides(comfy_server, stock_workflow, tmp_path, capsys):
    out = tmp_path / "out"
    rc = client.main([_write(tmp_path, stock_workflow), "--server", comfy_server.base_url, "--out", str(out),
                      "--seed", "7", "--prompt", "a ball rolling down a ramp", "--set", "9.filename_prefix=cli",
                      "--no-websocket", "--timeout", "300"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    files = sorted(out.iterdir())
    assert len(files) == 1 and files[0].name.startswith("cli") and files[0].suffix == ".png"
    assert captured.out.strip() == str(files[0])
    assert _png(files[0])[:2] == ("PNG", (64, 64))
    # The server executed the overridden workflow.
    history = comfy_server.get_json("/history")
    prompts = [h["prompt"][2] for h in history.values()]  # other tests' prompts too, with other node ids
    assert any(p.get("3", {}).get("inputs", {}).get("seed") == 7
               and p.get("6", {}).get("inputs", {}).get("text") == "a ball rolling down a ramp" for p in prompts)


def test_seed_determinism(comfy_server, stock_workflow, tmp_path):
    # seed 0, seed 1, seed 0 again: the sampler runs every time (the host caches only the previous prompt).
    pixels = []
    for i, seed in enumerate((0, 1, 0)):
        wf = client.apply_overrides(stock_workflow, seed=seed, sets=[f"9.filename_prefix=det{i}"])
        _, _, paths = comfy_server.run_workflow(wf, timeout=300, out_dir=tmp_path / str(i))
        pixels.append(_png(paths[0])[2])
    assert pixels[0] == pixels[2]
    assert pixels[0] != pixels[1]


def test_node_errors_give_clear_message_and_exit_code(comfy_server, stock_workflow, tmp_path, capsys):
    rc = client.main([_write(tmp_path, stock_workflow), "--server", comfy_server.base_url,
                      "--out", str(tmp_path / "o"), "--set", "3.steps=-1", "--no-websocket"])
    err = capsys.readouterr().err
    assert rc == client.EXIT_WORKFLOW
    assert "ComfyUI refused the workflow" in err
    assert "node 3 (KSampler), input 'steps'" in err and "-1" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_queue_prompt_raises_workflow_error(comfy_server, stock_workflow):
    wf = client.apply_overrides(stock_workflow, sets=["4.ckpt_name=missing.safetensors"])
    with pytest.raises(client.WorkflowError) as info:
        client.queue_prompt(comfy_server.base_url, wf)
    assert "node 4 (CheckpointLoaderSimple), input 'ckpt_name'" in str(info.value)
    assert info.value.response["node_errors"]["4"]["class_type"] == "CheckpointLoaderSimple"


def test_execution_error_gives_clear_message(comfy_server, stock_workflow, tmp_path, capsys):
    # Validation accepts the prefix; SaveImage refuses at run time to write outside the output folder.
    rc = client.main([_write(tmp_path, stock_workflow), "--server", comfy_server.base_url,
                      "--out", str(tmp_path / "o"), "--set", "9.filename_prefix=../../escape", "--no-websocket",
                      "--timeout", "300"])
    err = capsys.readouterr().err
    assert rc == client.EXIT_WORKFLOW
    assert "execution failed in node 9 (SaveImage)" in err
    assert "outside the output folder" in err


def test_websocket_progress(comfy_server, stock_workflow, tmp_path):
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    events = []
    wf = client.apply_overrides(stock_workflow, seed=123, sets=["9.filename_prefix=ws"])
    cid = "srrl-test-ws"
    ws = client.open_websocket(comfy_server.base_url, cid)
    assert ws is not None
    try:
        pid = client.queue_prompt(comfy_server.base_url, wf, client_id=cid)
        entry = client.wait_for_result(comfy_server.base_url, pid, timeout=300, ws=ws,
                                       on_progress=lambda ev, data: events.append((ev, data)))
    finally:
        ws.close()
    assert entry["status"]["status_str"] == "success"
    kinds = [e for e, _ in events]
    assert "executing" in kinds
    steps = [d for e, d in events if e == "progress"]
    assert steps and steps[-1]["value"] == steps[-1]["max"] == 2


def test_timeout_cancels_and_exits_4(comfy_server, stock_workflow, tmp_path, capsys):
    _drain_queue(comfy_server)
    wf = client.apply_overrides(stock_workflow, seed=99, sets=["3.steps=40", "9.filename_prefix=timeout"])
    rc = client.main([_write(tmp_path, wf), "--server", comfy_server.base_url, "--out", str(tmp_path / "o"),
                      "--timeout", "0.5", "--no-websocket"])
    assert rc == client.EXIT_TIMEOUT
    assert "timed out" in capsys.readouterr().err
    _drain_queue(comfy_server)
    # The server still works afterwards.
    _, entry, _ = comfy_server.run_workflow(client.apply_overrides(stock_workflow, seed=5), timeout=300)
    assert entry["status"]["status_str"] == "success"


def _partly_invalid(stock_workflow):
    wf = dict(stock_workflow)
    wf["11"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 1, "height": 64, "batch_size": 1}}  # min 16
    wf["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["4", 2]}}
    wf["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["13", 0]}}
    return client.apply_overrides(wf, seed=11, sets=["9.filename_prefix=partial"])


def test_partly_invalid_workflow_is_refused_unless_allowed(comfy_server, stock_workflow, tmp_path, capsys):
    path = _write(tmp_path, _partly_invalid(stock_workflow))
    rc = client.main([path, "--server", comfy_server.base_url, "--out", str(tmp_path / "a"), "--no-websocket"])
    err = capsys.readouterr().err
    assert rc == client.EXIT_WORKFLOW
    assert "refused part of the workflow" in err and "node 11 (EmptyLatentImage), input 'width'" in err
    _drain_queue(comfy_server)
    rc = client.main([path, "--server", comfy_server.base_url, "--out", str(tmp_path / "b"), "--no-websocket",
                      "--allow-partial", "--timeout", "300"])
    assert rc == 0, capsys.readouterr().err
    assert [p.name.startswith("partial") for p in (tmp_path / "b").iterdir()] == [True]
