"""HTTP to a ComfyUI server with the standard library: answers as (status, body); network failures as ServerError."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from .errors import ServerError


def normalize_server(server: str) -> str:
    server = server.strip().rstrip("/")
    if "://" not in server:
        server = "http://" + server
    return server


def request(server, method, path, body=None, timeout=30.0):
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


def request_json(server, method, path, body=None, timeout=30.0):
    status, raw = request(server, method, path, body, timeout)
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
