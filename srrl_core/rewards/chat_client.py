"""A minimal OpenAI-compatible chat-completions client on the standard library (urllib).

POSTs JSON to ``<endpoint>/chat/completions`` with a timeout; transient failures (connection errors,
timeouts, HTTP 429 and 5xx) are retried ``retries`` times with exponential backoff
``backoff * 2**attempt`` seconds; other HTTP errors and non-JSON answers fail at once. The API key is
read from the environment variable whose *name* the user gives, at request time, so keys never sit in
configs, workflows or logs.

A workflow is untrusted input, so the person running the server decides, through the server's environment:

* which variables may be sent as keys: names ``SRRL_<NAME>_API_KEY`` and ``OPENAI_API_KEY``, plus the names
  listed in ``SRRL_ALLOWED_KEY_VARS`` (comma-separated);
* which endpoints may be called at all: loopback (127.0.0.0/8, ::1, localhost), plus the hosts (``example.org``,
  ``example.org:8443``) or URL prefixes (``https://api.openai.com/v1``) listed in ``SRRL_ALLOWED_ENDPOINTS``.

Nothing a workflow passes (widgets or options) can widen either list. Redirects are not followed (they would carry
the key elsewhere), and key-like text is masked in every error message.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request

from ..validation import check_float, check_int

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEY_VARS_ENV = "SRRL_ALLOWED_KEY_VARS"
ENDPOINTS_ENV = "SRRL_ALLOWED_ENDPOINTS"
_DEFAULT_KEY_VAR = re.compile(r"^(SRRL_[A-Z0-9_]+_API_KEY|OPENAI_API_KEY)$")
# Shapes of common API keys and auth headers, masked in any text that reaches an error message or a log.
_KEY_LIKE = re.compile(r"(?i)(bearer\s+\S+|\b(sk|hf|pk|rk|ghp|gho|xox[abp]|api)[-_][A-Za-z0-9_\-]{6,}|\bAIza[0-9A-Za-z_\-]{20,})")
MAX_TIMEOUT = 3600.0


class ChatError(RuntimeError):
    """The endpoint could not be reached or gave an unusable answer."""


def chat_completions_url(endpoint: str) -> str:
    """'http://host:8000/v1' or '.../v1/chat/completions' -> the chat-completions URL."""
    if not isinstance(endpoint, str) or not re.match(r"^https?://[^/\s]+", endpoint.strip()):
        raise ValueError(f"endpoint must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {endpoint!r}")
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"


def redact(text: str, secret: str | None = None) -> str:
    """``text`` with ``secret`` and anything shaped like an API key or a bearer token replaced by '***'."""
    text = str(text)
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


def allowed_key_vars() -> str:
    extra = [n.strip() for n in os.environ.get(KEY_VARS_ENV, "").split(",") if n.strip()]
    return "SRRL_<NAME>_API_KEY, OPENAI_API_KEY" + "".join(f", {n}" for n in extra)


def key_var_allowed(name: str) -> bool:
    extra = {n.strip() for n in os.environ.get(KEY_VARS_ENV, "").split(",") if n.strip()}
    return bool(_DEFAULT_KEY_VAR.match(name)) or name in extra


def endpoint_allowed(url: str) -> bool:
    """Loopback always; other hosts only when ``SRRL_ALLOWED_ENDPOINTS`` lists the host or a prefix of ``url``."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    for entry in (e.strip() for e in os.environ.get(ENDPOINTS_ENV, "").split(",")):
        if not entry:
            continue
        if "://" in entry:  # a URL prefix, matched at a path boundary
            prefix = entry.rstrip("/")
            if url == prefix or url.startswith(prefix + "/"):
                return True
        elif entry.lower() in (host, f"{host}:{parts.port}" if parts.port else host):
            return True
    return False


def check_endpoint(url: str) -> str:
    if urllib.parse.urlsplit(url).username is not None:
        raise ValueError("endpoint must not hold a user name or password; put the API key in an allowed environment "
                         "variable and name it in api_key_env")
    if not endpoint_allowed(url):
        host = urllib.parse.urlsplit(url).hostname
        raise ValueError(
            f"endpoint {_public(url)} is not allowed: this server sends judge requests only to loopback addresses and "
            f"to the hosts or URL prefixes listed in the environment variable {ENDPOINTS_ENV} (comma-separated). "
            f"To allow it, the person running ComfyUI sets e.g. {ENDPOINTS_ENV}={host} and restarts it"
        )
    return url


def _public(url: str) -> str:
    """The URL without its query and fragment (they may carry tokens), for messages."""
    parts = urllib.parse.urlsplit(url)
    return redact(urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def check_env_name(api_key_env: str | None) -> str | None:
    """Validate the NAME of the environment variable holding the key ('' or None: no key): a variable the
    server's operator allowed, and set."""
    if not api_key_env:
        return None
    if not isinstance(api_key_env, str) or not _ENV_NAME.match(api_key_env):
        # never echo the value: it may be the key itself, pasted by mistake
        raise ValueError("api_key_env must be the NAME of an environment variable holding the API key "
                         "(letters, digits and '_', e.g. OPENAI_API_KEY), not the key itself")
    if not key_var_allowed(api_key_env):
        # not echoed either: a pasted key can look like a variable name (hf_..., sk_...)
        raise ValueError(
            f"api_key_env names a variable that is not allowed to hold API keys on this server. Allowed: "
            f"{allowed_key_vars()}. To allow another name, the person running ComfyUI adds it to the environment "
            f"variable {KEY_VARS_ENV} (comma-separated) and restarts it"
        )
    if api_key_env not in os.environ:
        raise ValueError(f"api_key_env names the environment variable {api_key_env!r}, which is not set; "
                         f"set it in the environment of the process that runs the judge")
    return api_key_env


class ChatClient:
    def __init__(self, endpoint: str, api_key_env: str | None = None, timeout: float = 60.0, retries: int = 2,
                 backoff: float = 1.0):
        self.url = check_endpoint(chat_completions_url(endpoint))
        self.api_key_env = check_env_name(api_key_env)
        self.timeout = check_float("timeout", timeout, low=0.01, high=MAX_TIMEOUT)
        self.retries = check_int("retries", retries, low=0, high=10)
        self.backoff = check_float("backoff", backoff, low=0.0, high=60.0)
        self._opener = urllib.request.build_opener(_NoRedirect)

    @property
    def public_url(self) -> str:
        return _public(self.url)

    def post(self, payload: dict, cancelled: threading.Event | None = None) -> dict:
        """Send one request, retrying transient failures; returns the decoded JSON answer. Once ``cancelled`` is set
        (the caller gave up on this batch), no further attempt or back-off wait is made."""
        cancelled = cancelled or threading.Event()
        check_endpoint(self.url)  # the environment is the authority: re-read it for every request
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.public_url
        last_error = None
        for attempt in range(self.retries + 1):
            if attempt and cancelled.wait(self.backoff * 2 ** (attempt - 1)):
                break
            if cancelled.is_set():
                break
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with self._opener.open(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                detail = redact(error.read()[:300].decode("utf-8", "replace"), key)
                last_error = ChatError(f"{url} answered HTTP {error.code}: {detail}")
                if error.code == 429 or error.code >= 500:
                    continue
                raise last_error from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as error:
                reason = redact(getattr(error, "reason", error), key)
                last_error = ChatError(f"could not reach {url} (timeout {self.timeout:g}s): {reason}")
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise ChatError(redact(f"{url} did not answer JSON: {raw[:200]!r}", key)) from None
        if cancelled.is_set():
            raise ChatError(f"request to {url} cancelled")
        raise ChatError(f"{last_error} (gave up after {self.retries + 1} attempts)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would resend the Authorization header to the new location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to another URL refused ({msg})", headers, fp)
