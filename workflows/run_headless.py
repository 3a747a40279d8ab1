#!/usr/bin/env python3
"""Run an API-format ComfyUI workflow on a running ComfyUI server and download its outputs.

    python workflows/run_headless.py WORKFLOW_API.json --server http://127.0.0.1:8188 --out results/ \\
        [--seed N] [--prompt TEXT] [--rounds K] [--set NODE_ID.INPUT=VALUE ...] [--timeout SECONDS]

The workflow must be in API format (ComfyUI: "Save (API Format)"; the files under workflows/api/): a JSON
object {node_id: {"class_type": ..., "inputs": {...}}}. A UI workflow (with "nodes" and "links") is refused.

Overrides, applied in this order:
  --seed N           every `seed` and `noise_seed` input
  --rounds K         every `rounds` input
  --prompt TEXT      the text of the positive prompt: every text-encoder node (a `text` input) whose output
                     reaches an input named `positive`, possibly through conditioning nodes
  --set ID.IN=VALUE  any input of any node (repeatable). VALUE is converted to the type of the value it
                     replaces (int, float, bool, string); for a new input or a link it is read as JSON
                     when it parses as JSON ([\"4\", 0] is a link), else taken as a string.

Progress comes from ComfyUI's websocket when the `websocket-client` package is installed (and --no-websocket
is not given), otherwise the client polls /history/<prompt_id>. Files written by output nodes (SaveImage...)
are downloaded through /view into --out, under sanitised names that never leave that directory.

Exit codes: 0 success; 1 the server rejected the workflow (validation, node_errors) or its execution failed
or was interrupted; 2 bad command line, workflow file or override; 3 the server could not be reached or
answered nonsense; 4 --timeout expired (the prompt is then removed from the queue or interrupted).

Only the standard library is required. The functions queue_prompt, wait_for_result, download_outputs and
apply_overrides can be imported (from a test, a notebook, another script).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

DEFAULT_SERVER = os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188")

EXIT_OK, EXIT_WORKFLOW, EXIT_USAGE, EXIT_CONNECTION, EXIT_TIMEOUT = 0, 1, 2, 3, 4

SEED_INPUTS = ("seed", "noise_seed")
TEXT_INPUTS = ("text", "text_g", "text_l")
# Inputs through which conditioning flows from a text encoder to a sampler's `positive` input.
_CONDITIONING_INPUT = re.compile(r"^(positive|conditioning(_\w+)?|cond(_\w+)?)$")


# --- errors ---------------------------------------------------------------------------------------------

class HeadlessError(Exception):
    exit_code = EXIT_WORKFLOW


class UsageError(HeadlessError, ValueError):
    """Bad workflow file or override."""
    exit_code = EXIT_USAGE


class OverrideError(UsageError):
    pass


class ServerError(HeadlessError):
    """The server could not be reached or gave an answer we cannot use."""
    exit_code = EXIT_CONNECTION


class WorkflowError(HeadlessError):
    """The server refused the workflow (HTTP 400, node_errors)."""

    def __init__(self, message, response=None):
        super().__init__(message)
        self.response = response


class ExecutionError(HeadlessError):
    """The workflow was queued but its execution failed or was interrupted."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details or {}


class TimeoutExpired(HeadlessError):
    exit_code = EXIT_TIMEOUT


# --- HTTP -----------------------------------------------------------------------------------------------

def normalize_server(server: str) -> str:
    server = server.strip().rstrip("/")
    if "://" not in server:
        server = "http://" + server
    return server


def _request(server, method, path, body=None, timeout=30.0):
    """(status, bytes). HTTP errors are returned, not raised; network failures raise ServerError."""
    url = normalize_server(server) + path
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(f"cannot reach ComfyUI at {normalize_server(server)} ({method} {path}): {reason}") from e


def _json(server, method, path, body=None, timeout=30.0):
    status, raw = _request(server, method, path, body, timeout)
    try:
        payload = json.loads(raw.decode("utf-8")) if raw else None
    except ValueError:
        payload = None
    if status != 200 and status != 400:
        text = raw.decode("utf-8", "replace")[:500]
        raise ServerError(f"{method} {path}: HTTP {status}: {text}")
    if payload is None and status == 200 and raw:
        raise ServerError(f"{method} {path}: the answer is not JSON: {raw[:200]!r}")
    return status, payload


# --- workflow files and overrides -----------------------------------------------------------------------

def load_workflow(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read workflow {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise UsageError(f"workflow {path} is not valid JSON: {e}") from e
    return validate_workflow(data, str(path))


def validate_workflow(data, name="workflow") -> dict:
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data:
        data = data["prompt"]  # a saved /prompt request body
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise UsageError(f"{name} is a UI workflow; export it from ComfyUI with 'Save (API Format)' "
                         "(or use the file under workflows/api/)")
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{name} is not an API-format workflow (a JSON object of nodes)")
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs", {}), dict):
            raise UsageError(f"{name}: node {node_id!r} has no class_type/inputs; is this an API-format workflow?")
    return data


def _is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _parse_loose(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _coerce(text: str, current, where: str):
    """Convert the command-line string `text` to the type of `current`."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OverrideError(f"{where}: expected a boolean (true/false), got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
            raise OverrideError(f"{where}: expected an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise OverrideError(f"{where}: expected a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    return _parse_loose(text)  # a link, a list, a new input


def parse_set(spec: str):
    """'NODE_ID.input=value' -> (node_id, input, value_text): split at the first '=', then at the first '.'
    (API node ids are integers as strings, or ids like '12:3' from group nodes, never with dots)."""
    if "=" not in spec:
        raise OverrideError(f"--set {spec!r}: expected NODE_ID.INPUT=VALUE")
    target, value = spec.split("=", 1)
    if "." not in target:
        raise OverrideError(f"--set {spec!r}: expected NODE_ID.INPUT=VALUE")
    node_id, input_name = target.split(".", 1)
    node_id, input_name = node_id.strip(), input_name.strip()
    if not node_id or not input_name:
        raise OverrideError(f"--set {spec!r}: expected NODE_ID.INPUT=VALUE")
    return node_id, input_name, value


def _literal_inputs(prompt, names):
    for node_id, node in prompt.items():
        for name in names:
            if name in node.get("inputs", {}) and not _is_link(node["inputs"][name]):
                yield node_id, name


def positive_text_nodes(prompt) -> list:
    """Ids of the text-encoder nodes whose output reaches an input named `positive`.

    Walks upstream from every `positive` input, through conditioning inputs only (positive, conditioning,
    conditioning_to, cond...), and collects the nodes that have a literal text input.
    """
    found, seen = [], set()
    stack = [node["inputs"]["positive"][0] for node in prompt.values()
             if _is_link(node.get("inputs", {}).get("positive"))]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        inputs = prompt[node_id].get("inputs", {})
        if any(isinstance(inputs.get(t), str) for t in TEXT_INPUTS):
            found.append(node_id)
            continue
        for name, value in inputs.items():
            if _is_link(value) and _CONDITIONING_INPUT.match(name):
                stack.append(value[0])
    return sorted(found, key=lambda k: (len(k), k))


def apply_overrides(prompt: dict, sets=(), seed=None, prompt_text=None, rounds=None, log=None) -> dict:
    """A copy of `prompt` with the overrides applied; raises OverrideError naming what did not fit."""
    prompt = copy.deepcopy(validate_workflow(prompt))
    say = log or (lambda msg: None)

    if seed is not None:
        targets = list(_literal_inputs(prompt, SEED_INPUTS))
        if not targets:
            raise OverrideError("--seed: the workflow has no seed or noise_seed input")
        for node_id, name in targets:
            prompt[node_id]["inputs"][name] = int(seed)
            say(f"set {node_id}.{name} = {int(seed)}")

    if rounds is not None:
        targets = list(_literal_inputs(prompt, ("rounds",)))
        if not targets:
            raise OverrideError("--rounds: the workflow has no rounds input")
        for node_id, name in targets:
            prompt[node_id]["inputs"][name] = int(rounds)
            say(f"set {node_id}.{name} = {int(rounds)}")

    if prompt_text is not None:
        targets = positive_text_nodes(prompt)
        if not targets:
            raise OverrideError("--prompt: no text-encoder node feeds a `positive` input in this workflow; "
                                "use --set NODE_ID.text=...")
        for node_id in targets:
            inputs = prompt[node_id]["inputs"]
            for t in TEXT_INPUTS:
                if isinstance(inputs.get(t), str):
                    inputs[t] = prompt_text
                    say(f"set {node_id}.{t} = {prompt_text!r}")
        for node_id, name in _literal_inputs(prompt, ("reward_prompt",)):  # what SRRL's reward judges against
            prompt[node_id]["inputs"][name] = prompt_text
            say(f"set {node_id}.{name} = {prompt_text!r}")

    for spec in sets:
        node_id, name, text = parse_set(spec) if isinstance(spec, str) else spec
        if node_id not in prompt:
            raise OverrideError(f"--set {node_id}.{name}: no node {node_id!r} in the workflow "
                                f"(nodes: {', '.join(sorted(prompt, key=lambda k: (len(k), k)))})")
        inputs = prompt[node_id].setdefault("inputs", {})
        where = f"--set {node_id}.{name} ({prompt[node_id]['class_type']})"
        if name in inputs:
            value = _coerce(text, inputs[name], where) if isinstance(text, str) else text
        else:
            value = _parse_loose(text) if isinstance(text, str) else text
        inputs[name] = value
        say(f"set {node_id}.{name} = {value!r}")
    return prompt


# --- queue, wait, download ------------------------------------------------------------------------------

def format_node_errors(node_errors, prompt=None) -> str:
    lines = []
    if not isinstance(node_errors, dict):
        return ""
    for node_id, info in sorted(node_errors.items(), key=lambda kv: (len(kv[0]), kv[0])):
        class_type = info.get("class_type") or (prompt or {}).get(node_id, {}).get("class_type", "?")
        for err in info.get("errors", []):
            extra = err.get("extra_info") or {}
            input_name = extra.get("input_name")
            msg = err.get("message", "error")
            details = err.get("details")
            text = f"  node {node_id} ({class_type})"
            if input_name:
                text += f", input '{input_name}'"
            text += f": {msg}"
            if details and details != input_name:
                text += f" [{details}]"
            if "received_value" in extra and str(extra["received_value"]) not in msg:
                text += f" (got {extra['received_value']!r})"
            lines.append(text)
    return "\n".join(lines)


def queue_prompt(server, prompt, client_id=None, extra_data=None, timeout=30.0, allow_partial=False) -> str:
    """POST /prompt; returns the prompt id. Raises WorkflowError with a readable message on HTTP 400.

    When only some output nodes fail validation ComfyUI answers 200, queues the valid ones and lists the
    others in node_errors. That is an error too (the queued prompt is removed again) unless allow_partial.
    """
    body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
    if extra_data:
        body["extra_data"] = extra_data
    status, payload = _json(server, "POST", "/prompt", body, timeout=timeout)
    if status == 400 or not isinstance(payload, dict) or "prompt_id" not in payload:
        payload = payload if isinstance(payload, dict) else {}
        err = payload.get("error")
        if isinstance(err, dict):
            head = err.get("message") or err.get("type") or "invalid prompt"
            details = err.get("details") or ""
        else:
            head, details = (str(err) if err else "the server refused the workflow"), ""
        msg = f"ComfyUI refused the workflow: {head}"
        node_text = format_node_errors(payload.get("node_errors"), prompt)
        if node_text:
            msg += "\n" + node_text
        elif details:
            msg += "\n  " + str(details).replace("\n", "\n  ")
        raise WorkflowError(msg, payload)
    if payload.get("node_errors"):
        # Some outputs failed validation and will not run; the others were queued.
        text = format_node_errors(payload["node_errors"], prompt)
        if not allow_partial:
            cancel(server, payload["prompt_id"])
            raise WorkflowError("ComfyUI refused part of the workflow (the rest was queued, then removed):\n"
                                + text, payload)
        print("warning: some outputs will not run:\n" + text, file=sys.stderr)
    return payload["prompt_id"]


def _history_entry(server, prompt_id, timeout=30.0):
    status, payload = _json(server, "GET", f"/history/{urllib.parse.quote(prompt_id)}", timeout=timeout)
    if isinstance(payload, dict):
        return payload.get(prompt_id)
    return None


def _queue_state(server, prompt_id):
    """'running', 'pending' (with position) or None."""
    try:
        _, q = _json(server, "GET", "/queue", timeout=10.0)
    except HeadlessError:
        return None, None
    if not isinstance(q, dict):
        return None, None
    for item in q.get("queue_running", []):
        if len(item) > 1 and item[1] == prompt_id:
            return "running", 0
    pending = sorted(q.get("queue_pending", []), key=lambda it: it[0] if it else 0)
    for pos, item in enumerate(pending):
        if len(item) > 1 and item[1] == prompt_id:
            return "pending", pos + 1
    return None, None


def cancel(server, prompt_id) -> str:
    """Remove a pending prompt from the queue, or interrupt it if it is the one running."""
    state, _ = _queue_state(server, prompt_id)
    try:
        if state == "pending":
            _request(server, "POST", "/queue", {"delete": [prompt_id]}, timeout=10.0)
        elif state == "running":
            _request(server, "POST", "/interrupt", {}, timeout=10.0)
    except HeadlessError:
        pass
    return state or "done"


def _check_status(entry, prompt_id):
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    for item in messages:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            continue
        event, data = item
        data = data or {}
        if event == "execution_error":
            msg = (f"execution failed in node {data.get('node_id')} ({data.get('node_type')}): "
                   f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
            raise ExecutionError(msg, data)
        if event == "execution_interrupted":
            raise ExecutionError(f"execution was interrupted in node {data.get('node_id')} "
                                 f"({data.get('node_type')})", data)
    if status.get("status_str") == "error":
        raise ExecutionError(f"execution of prompt {prompt_id} failed (no details in the history)", status)


def _websocket_module():
    try:
        import websocket  # the websocket-client package
    except ImportError:
        return None
    return websocket if hasattr(websocket, "create_connection") else None


def open_websocket(server, client_id, timeout=10.0):
    """A websocket-client connection to /ws, or None when the package is missing or the connection fails."""
    ws_mod = _websocket_module()
    if ws_mod is None:
        return None
    parts = urllib.parse.urlsplit(normalize_server(server))
    scheme = "wss" if parts.scheme == "https" else "ws"
    url = f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={urllib.parse.quote(client_id)}"
    try:
        return ws_mod.create_connection(url, timeout=timeout)
    except Exception:
        return None


def _default_progress(event, data):
    if event == "progress":
        value, maximum = data.get("value"), data.get("max")
        node = data.get("node")
        print(f"\r  progress{f' (node {node})' if node else ''}: {value}/{maximum}   ", end="",
              file=sys.stderr, flush=True)
    elif event == "executing" and data.get("node") is not None:
        print(f"\n  executing node {data['node']}", end="", file=sys.stderr, flush=True)
    elif event == "queue":
        print(f"  {data}", file=sys.stderr, flush=True)


def wait_for_result(server, prompt_id, timeout=600.0, poll_interval=0.5, ws=None, on_progress=None,
                    cancel_on_timeout=True) -> dict:
    """Wait until the prompt has finished; returns its /history entry ({"outputs", "status", "prompt"}).

    `ws`: an open websocket-client connection (opened with the same client_id *before* queueing) for live
    progress; without it the history is polled. `on_progress(event, data)` receives websocket events for
    this prompt ("executing", "progress", "executed", ...) or ("queue", text) while polling.
    Raises ExecutionError (execution_error / interrupted) or TimeoutExpired (after cancelling the prompt,
    unless cancel_on_timeout is False).
    """
    deadline = time.monotonic() + float(timeout)
    last_poll = 0.0
    last_queue_note = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            state = cancel(server, prompt_id) if cancel_on_timeout else "left in the queue"
            raise TimeoutExpired(f"timed out after {timeout:g} s waiting for prompt {prompt_id} ({state})")
        if ws is not None:
            try:
                ws.settimeout(max(0.05, min(poll_interval, deadline - now)))
                message = ws.recv()
            except Exception as e:  # timeout, closed connection: fall through to a history poll
                if type(e).__name__ not in ("WebSocketTimeoutException", "timeout", "TimeoutError"):
                    ws = None
                message = None
            if isinstance(message, str):
                try:
                    event = json.loads(message)
                except ValueError:
                    event = None
                if isinstance(event, dict):
                    data = event.get("data") or {}
                    if data.get("prompt_id") in (None, prompt_id) and on_progress is not None:
                        if event.get("type") not in ("status", "crystools.monitor"):
                            on_progress(event.get("type"), data)
                    done = (event.get("type") == "executing" and data.get("node") is None
                            and data.get("prompt_id") == prompt_id)
                    failed = event.get("type") in ("execution_error", "execution_interrupted") \
                        and data.get("prompt_id") == prompt_id
                    if not (done or failed) and time.monotonic() - last_poll < 2.0:
                        continue
            elif message is not None:
                continue  # binary preview frame
        else:
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))
        last_poll = time.monotonic()
        entry = _history_entry(server, prompt_id)
        if entry is not None:
            status = entry.get("status") or {}
            if status.get("completed", True) or status.get("status_str") in ("success", "error"):
                _check_status(entry, prompt_id)
                return entry
        elif on_progress is not None and ws is None:
            state, pos = _queue_state(server, prompt_id)
            note = "running" if state == "running" else (f"pending, position {pos}" if state else None)
            if note and note != last_queue_note:
                on_progress("queue", note)
                last_queue_note = note


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, default="output") -> str:
    """A plain file name: no directories, no leading dots, only [A-Za-z0-9._-]."""
    name = str(name).replace("\\", "/").split("/")[-1]
    name = _SAFE.sub("_", name).lstrip(".")
    name = name[:200]
    return name or default


def _unique_path(out_dir, name):
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while os.path.exists(os.path.join(out_dir, candidate)):
        candidate = f"{stem}-{n}{ext}"
        n += 1
    return os.path.join(out_dir, candidate)


def output_files(entry, types=("output",)):
    """[(node_id, {"filename", "subfolder", "type"})] for every file an output node reported."""
    files = []
    for node_id, out in (entry.get("outputs") or {}).items():
        for key, items in (out or {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    if types is None or item.get("type", "output") in types:
                        files.append((node_id, item))
    return files


def download_outputs(server, entry, out_dir, types=("output",), timeout=60.0) -> list:
    """Download the files of a history entry into out_dir; returns their paths.

    Names are sanitised (no directories, no leading dots) and made unique; nothing is written outside out_dir.
    `types`: which ComfyUI folders to take ("output", "temp" for previews, "input"); None for all.
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for node_id, item in output_files(entry, types):
        query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                        "type": item.get("type", "output")})
        status, data = _request(server, "GET", f"/view?{query}", timeout=timeout)
        if status != 200:
            raise ServerError(f"GET /view for {item['filename']!r} (node {node_id}): HTTP {status}")
        path = os.path.abspath(_unique_path(out_dir, safe_filename(item["filename"])))
        if os.path.commonpath([out_dir, path]) != out_dir:  # cannot happen after safe_filename; belt and braces
            raise ServerError(f"refusing to write {path} outside {out_dir}")
        with open(path, "xb") as f:
            f.write(data)
        paths.append(path)
    return paths


def run(server, prompt, out_dir=None, timeout=600.0, use_websocket=True, on_progress=None, types=("output",),
        allow_partial=False):
    """Queue, wait and download: (prompt_id, history entry, downloaded paths)."""
    client_id = uuid.uuid4().hex
    ws = open_websocket(server, client_id) if use_websocket else None
    try:
        prompt_id = queue_prompt(server, prompt, client_id=client_id, allow_partial=allow_partial)
        try:
            entry = wait_for_result(server, prompt_id, timeout=timeout, ws=ws, on_progress=on_progress)
        except KeyboardInterrupt:
            cancel(server, prompt_id)  # do not leave the work running on the server
            raise
    finally:
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
    paths = download_outputs(server, entry, out_dir, types=types) if out_dir else []
    return prompt_id, entry, paths


# --- command line ---------------------------------------------------------------------------------------

def build_parser():
    ap = argparse.ArgumentParser(
        prog="run_headless.py",
        description="Queue an API-format workflow on a running ComfyUI, wait, and download its outputs.",
        epilog="Exit codes: 0 ok, 1 workflow refused or failed, 2 usage, 3 server unreachable, 4 timeout.")
    ap.add_argument("workflow", help="API-format workflow JSON (ComfyUI 'Save (API Format)')")
    ap.add_argument("--server", default=DEFAULT_SERVER,
                    help="ComfyUI base URL (default: $COMFYUI_URL or http://127.0.0.1:8188)")
    ap.add_argument("--out", default="comfy_outputs", help="directory for the downloaded outputs")
    ap.add_argument("--set", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                    help="override one input (repeatable)")
    ap.add_argument("--seed", type=int, help="set every seed/noise_seed input")
    ap.add_argument("--prompt", dest="prompt_text", metavar="TEXT", help="set the positive prompt text")
    ap.add_argument("--rounds", type=int, help="set every `rounds` input")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result (default 600)")
    ap.add_argument("--include-previews", action="store_true", help="also download preview (temp) images")
    ap.add_argument("--allow-partial", action="store_true",
                    help="run the valid outputs when some output nodes fail validation (default: refuse)")
    ap.add_argument("--no-websocket", action="store_true", help="poll /history even if websocket-client is there")
    ap.add_argument("--dry-run", action="store_true", help="print the workflow after overrides and exit")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the downloaded paths")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        prompt = apply_overrides(load_workflow(args.workflow), sets=args.set, seed=args.seed,
                                 prompt_text=args.prompt_text, rounds=args.rounds, log=say)
        if args.dry_run:
            print(json.dumps(prompt, indent=2))
            return EXIT_OK
        types = ("output", "temp") if args.include_previews else ("output",)
        on_progress = None if args.quiet else _default_progress
        use_ws = not args.no_websocket
        if use_ws and _websocket_module() is None:
            say("(websocket-client not installed: polling /history, no step progress)")
        t0 = time.monotonic()
        prompt_id, entry, paths = run(args.server, prompt, out_dir=args.out, timeout=args.timeout,
                                      use_websocket=use_ws, on_progress=on_progress, types=types,
                                      allow_partial=args.allow_partial)
        if on_progress is not None:
            print(file=sys.stderr)
        say(f"prompt {prompt_id} finished in {time.monotonic() - t0:.1f} s; {len(paths)} file(s) in "
            f"{os.path.abspath(args.out)}")
        for node_id, out in (entry.get("outputs") or {}).items():
            extra = {k: v for k, v in (out or {}).items() if k not in ("images", "gifs", "audio", "videos")}
            if extra:
                say(f"node {node_id} output: {json.dumps(extra)[:1000]}")
        for p in paths:
            print(p)
        return EXIT_OK
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except HeadlessError as e:
        print(f"\nerror: {e}" if not isinstance(e, UsageError) else f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
