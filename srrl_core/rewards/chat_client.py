"""A minimal OpenAI-compatible chat-completions client on the standard library (urllib).

POSTs JSON to ``<endpoint>/chat/completions`` with a timeout; transient failures (connection errors,
timeouts, HTTP 429 and 5xx) are retried ``retries`` times with exponential backoff
``backoff * 2**attempt`` seconds; other HTTP errors and non-JSON answers fail at once. The API key is
read from the environment variable whose *name* the user gives, at request time, so keys never sit in
configs, workflows or logs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request

from ..validation import check_float, check_int

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ChatError(RuntimeError):
    """The endpoint could not be reached or gave an unusable answer."""


def chat_completions_url(endpoint: str) -> str:
    """'http://host:8000/v1' or '.../v1/chat/completions' -> the chat-completions URL."""
    if not isinstance(endpoint, str) or not re.match(r"^https?://[^/\s]+", endpoint.strip()):
        raise ValueError(f"endpoint must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {endpoint!r}")
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"


def check_env_name(api_key_env: str | None) -> str | None:
    """Validate the NAME of the environment variable holding the key ('' or None: no key)."""
    if not api_key_env:
        return None
    if not isinstance(api_key_env, str) or not _ENV_NAME.match(api_key_env):
        # never echo the value: it may be the key itself, pasted by mistake
        raise ValueError("api_key_env must be the NAME of an environment variable holding the API key "
                         "(letters, digits and '_', e.g. OPENAI_API_KEY), not the key itself")
    if api_key_env not in os.environ:
        raise ValueError(f"api_key_env names the environment variable {api_key_env!r}, which is not set; "
                         f"set it in the environment of the process that runs the judge")
    return api_key_env


class ChatClient:
    def __init__(self, endpoint: str, api_key_env: str | None = None, timeout: float = 60.0, retries: int = 2,
                 backoff: float = 1.0):
        self.url = chat_completions_url(endpoint)
        self.api_key_env = check_env_name(api_key_env)
        self.timeout = check_float("timeout", timeout, low=0.01)
        self.retries = check_int("retries", retries, low=0, high=10)
        self.backoff = check_float("backoff", backoff, low=0.0, high=60.0)

    def post(self, payload: dict) -> dict:
        """Send one request, retrying transient failures; returns the decoded JSON answer."""
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        last_error = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode("utf-8", "replace")
                last_error = ChatError(f"{self.url} answered HTTP {error.code}: {detail}")
                if error.code == 429 or error.code >= 500:
                    continue
                raise last_error from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as error:
                reason = getattr(error, "reason", error)
                last_error = ChatError(f"could not reach {self.url} (timeout {self.timeout:g}s): {reason}")
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise ChatError(f"{self.url} did not answer JSON: {raw[:200]!r}") from None
        raise ChatError(f"{last_error} (gave up after {self.retries + 1} attempts)")
