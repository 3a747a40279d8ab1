"""A vision-language model as a yes/no judge, over any OpenAI-compatible chat-completions endpoint.

For each image the judge sends one chat message: the question (a template with ``{prompt}`` and/or
``{rule}``) and the image as a base64 PNG data URL. The score is

    P(yes) = sum_{t in Y} exp(lp_t) / (sum_{t in Y} exp(lp_t) + sum_{t in N} exp(lp_t))

over the top log-probabilities of the first answer token that offers a yes/no candidate (Y: tokens that
normalise to "yes", e.g. "Yes", " yes", "YES."; N likewise for "no"), when the server returns
log-probabilities. Otherwise the answer text is parsed: "yes..." -> 1, "no..." -> 0. Any other answer is
malformed. Images are judged concurrently (``concurrency`` requests at a time).

On failure (unreachable, HTTP error, malformed answer) the judge raises VLMJudgeError, or, when the user
chose a ``fallback`` score, logs a warning and uses it. It never silently scores 0.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import string
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np
import torch

from ..validation import check_float, check_int
from .base import Reward
from .chat_client import ChatClient, ChatError, redact

logger = logging.getLogger(__name__)

PROMPT_QUESTION = "Does this image show: {prompt}? Answer Yes or No."
RULE_QUESTION = "Does this image obey: {rule}? Answer Yes or No."
_FIELDS = {"prompt", "rule"}
POLL_SECONDS = 0.1  # how often a waiting batch checks interrupt_check (the host's Cancel)


class VLMJudgeError(RuntimeError):
    """The judge could not score an image and no fallback score was chosen."""


def image_data_url(image: torch.Tensor) -> str:
    """One image [H, W, 3] in [0, 1] -> 'data:image/png;base64,...' (8-bit RGB PNG)."""
    from PIL import Image

    pixels = (image * 255).round().byte().cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _word(token: str) -> str:
    # tokenizers mark leading spaces with 'Ġ' (GPT-2 BPE) or '▁' (SentencePiece); servers may pass them through
    return token.replace("Ġ", " ").replace("▁", " ").strip().strip(string.punctuation + " ").casefold()


def yes_probability(choice: dict) -> float | None:
    """P(yes) from a choice's ``logprobs.content[*].top_logprobs``; None when they hold no yes/no candidate."""
    content = ((choice.get("logprobs") or {}).get("content")) or []
    for position in content:
        yes = no = 0.0
        for candidate in position.get("top_logprobs") or [position]:
            word, logprob = _word(str(candidate.get("token", ""))), candidate.get("logprob")
            if isinstance(logprob, (int, float)) and word in ("yes", "no"):
                p = math.exp(logprob)
                yes, no = (yes + p, no) if word == "yes" else (yes, no + p)
        if yes + no > 0:
            return yes / (yes + no)
    return None


def parse_answer(text) -> float:
    """'Yes.' -> 1.0, 'no, because...' -> 0.0; anything else raises ChatError (malformed answer)."""
    words = str(text or "").split()
    first = _word(words[0]) if words else ""
    if first in ("yes", "no"):
        return 1.0 if first == "yes" else 0.0
    raise ChatError(f"malformed judge answer: expected it to start with Yes or No, got {str(text)[:120]!r}")


class VLMJudge(Reward):
    name = "vlm_judge"

    def __init__(self, endpoint: str, model: str, question: str | None = None, rule: str | None = None,
                 api_key_env: str | None = None, logprobs: bool = True, top_logprobs: int = 5, max_tokens: int = 5,
                 timeout: float = 60.0, retries: int = 2, backoff: float = 1.0, concurrency: int = 4,
                 fallback: float | None = None):
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be the non-empty model name the endpoint serves, got {model!r}")
        self.rule = (rule or "").strip() or None
        self.question = question or (RULE_QUESTION if self.rule else PROMPT_QUESTION)
        fields = {field for _, field, _, _ in string.Formatter().parse(self.question) if field is not None}
        if not fields <= _FIELDS or not fields:
            raise ValueError(f"question must use the placeholders {{prompt}} and/or {{rule}} only, got {self.question!r}")
        if "rule" in fields and not self.rule:
            raise ValueError("question uses {rule} but rule is empty; give the rule text, e.g. 'the ball is above the ramp'")
        self.client = ChatClient(endpoint, api_key_env, timeout, retries, backoff)
        self.model = model.strip()
        self.logprobs = bool(logprobs)
        self.top_logprobs = check_int("top_logprobs", top_logprobs, low=1, high=20)
        self.max_tokens = check_int("max_tokens", max_tokens, low=1, high=4096)
        self.concurrency = check_int("concurrency", concurrency, low=1, high=64)
        self.fallback = None if fallback is None else check_float("fallback", fallback, low=0.0, high=1.0)

    def payload(self, image: torch.Tensor, prompt: str) -> dict:
        """The chat-completions request for one image."""
        text = self.question.format(prompt=prompt.strip().rstrip("."), rule=self.rule or "")
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            ]}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        if self.logprobs:
            payload.update(logprobs=True, top_logprobs=self.top_logprobs)
        return payload

    def judge(self, image: torch.Tensor, prompt: str, cancelled: threading.Event | None = None) -> float:
        """P(yes) for one image; raises ChatError when the endpoint fails or answers nonsense."""
        answer = self.client.post(self.payload(image, prompt), cancelled)
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ChatError(f"malformed chat-completions answer from {self.client.public_url}: "
                            f"{redact(str(answer)[:200])}") from None
        probability = yes_probability(choice) if self.logprobs else None
        return parse_answer(text) if probability is None else probability

    def _judge_or_fallback(self, index: int, image: torch.Tensor, prompt: str, cancelled: threading.Event) -> float:
        try:
            return self.judge(image, prompt, cancelled)
        except ChatError as error:
            if self.fallback is None:
                raise VLMJudgeError(f"VLM judge failed on image {index} (model {self.model!r}): {error}. "
                                    "Fix the endpoint, or choose a fallback score to use instead") from error
            logger.warning("VLM judge failed on image %d, using fallback score %g: %s", index, self.fallback, error)
            return self.fallback

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        # Requests run in worker threads while this thread polls interrupt_check: a Cancel pressed while an
        # endpoint hangs is honoured within POLL_SECONDS, and the abandoned workers stop retrying.
        cancelled = threading.Event()  # this batch's: workers of an abandoned batch never resume
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
        futures = [pool.submit(self._judge_or_fallback, i, image, prompt, cancelled)
                   for i, (image, prompt) in enumerate(zip(images.cpu(), prompts))]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_EXCEPTION)
                failed = [f for f in futures if f in done and f.exception() is not None]
                if failed:
                    failed[0].result()  # raises the first failure without waiting for the others
                if pending and self.interrupt_check is not None:
                    self.interrupt_check()
            scores = [f.result() for f in futures]
        except BaseException:
            cancelled.set()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return torch.tensor(scores, dtype=torch.float32)
