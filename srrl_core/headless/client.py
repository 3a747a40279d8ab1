"""The ComfyUI server client: queue a prompt, follow it (websocket or /history polling), cancel it, and ``run``
(queue, wait, download) in one call."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.parse
import uuid

from .downloads import download_outputs
from .errors import ExecutionError, HeadlessError, TimeoutExpired, WorkflowError
from .transport import normalize_server, request, request_json

DEFAULT_SERVER = os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188")


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
    status, payload = request_json(server, "POST", "/prompt", body, timeout=timeout)
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
    _, payload = request_json(server, "GET", f"/history/{urllib.parse.quote(prompt_id)}", timeout=timeout)
    if isinstance(payload, dict):
        return payload.get(prompt_id)
    return None


def _queue_state(server, prompt_id):
    """'running', 'pending' (with position) or None."""
    try:
        _, q = request_json(server, "GET", "/queue", timeout=10.0)
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
            request(server, "POST", "/queue", {"delete": [prompt_id]}, timeout=10.0)
        elif state == "running":
            request(server, "POST", "/interrupt", {}, timeout=10.0)
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


def websocket_module():
    try:
        import websocket  # the websocket-client package
    except ImportError:
        return None
    return websocket if hasattr(websocket, "create_connection") else None


def open_websocket(server, client_id, timeout=10.0):
    """A websocket-client connection to /ws, or None when the package is missing or the connection fails."""
    ws_mod = websocket_module()
    if ws_mod is None:
        return None
    parts = urllib.parse.urlsplit(normalize_server(server))
    scheme = "wss" if parts.scheme == "https" else "ws"
    url = f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={urllib.parse.quote(client_id)}"
    try:
        return ws_mod.create_connection(url, timeout=timeout)
    except Exception:  # noqa: BLE001  (the websocket is optional: any failure means polling instead)
        return None


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
            except Exception as e:  # noqa: BLE001  (timeout, closed connection: fall through to a history poll)
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
                    if (data.get("prompt_id") in (None, prompt_id) and on_progress is not None
                            and event.get("type") not in ("status", "crystools.monitor")):
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
            with contextlib.suppress(Exception):  # closing a broken connection must not hide the result
                ws.close()
    paths = download_outputs(server, entry, out_dir, types=types) if out_dir else []
    return prompt_id, entry, paths
