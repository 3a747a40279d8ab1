"""An OpenAI-compatible chat-completions server on 127.0.0.1 that judges by a programmatic rule.

Rule: the answer is "Yes" iff the image's top half is brighter than its bottom half; with log-probabilities,
P(yes) = sigmoid(20 * (mean top - mean bottom)). ``mode`` switches behaviour for failure tests:
"logprobs", "text" (no logprobs, a sentence), "error" (HTTP 500), "flaky" (HTTP 500 for the first
``failures`` requests, then "logprobs"), "malformed" (an answer that is neither yes nor no),
"not_json", "slow" (answers after ``delay`` seconds), "echo_auth" (HTTP 401 quoting the Authorization header it
received, as careless servers do), "redirect" (HTTP 307 to ``redirect_to``), "hang" (answers after ``delay``
seconds, for Cancel tests).
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


class JudgeServer:
    def __init__(self):
        self.mode, self.failures, self.delay = "logprobs", 0, 0.0
        self.redirect_to = ""
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                status, answer = server.answer(self.path, body)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if status in (301, 302, 307, 308):
                        self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str, body: dict):
        if path != "/v1/chat/completions":
            return 404, {"error": f"no route {path}"}
        mode = self.mode
        if mode == "flaky":
            mode = "error" if len(self.requests) <= self.failures else "logprobs"
        if mode == "error":
            return 500, {"error": "internal error"}
        if mode == "not_json":
            return 200, b"<html>gateway</html>"
        if mode == "echo_auth":
            return 401, {"error": f"invalid credentials: {self.headers[-1].get('Authorization')}"}
        if mode == "redirect":
            return 307, {"error": "moved"}
        if mode == "hang":
            time.sleep(self.delay)
        if mode == "slow":
            time.sleep(self.delay)
        content = body["messages"][0]["content"]
        url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L"), dtype=float) / 255
        half = pixels.shape[0] // 2
        difference = pixels[:half].mean() - pixels[half:].mean()
        p_yes = 1 / (1 + math.exp(-20 * difference))
        word = "Yes" if difference > 0 else "No"
        if mode == "malformed":
            return 200, _completion("Perhaps, it is hard to say.")
        if mode == "text" or not body.get("logprobs"):
            return 200, _completion(f"{word}, the top is {'brighter' if word == 'Yes' else 'darker'}.")
        top = [{"token": "Yes", "logprob": math.log(max(p_yes, 1e-12)) - 0.01},
               {"token": " yes", "logprob": math.log(max(p_yes, 1e-12)) - 4.6},   # same meaning, other spelling
               {"token": "No", "logprob": math.log(max(1 - p_yes, 1e-12))},
               {"token": "Maybe", "logprob": -9.0}]
        return 200, _completion(word, {"content": [{"token": word, "logprob": -0.1, "top_logprobs": top}]})


def _completion(text: str, logprobs: dict | None = None) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "model": "rule-judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                         "finish_reason": "stop"}]}
