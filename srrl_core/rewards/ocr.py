"""OCR text reward: does the image show the text the prompt puts in quotes?

    score_i = 1 - lev(T_i, R_i) / max(|T_i|, |R_i|)     in [0, 1]

T_i: the prompt's quoted passages ("...", '...', “...”, ‘...’) joined by spaces; R_i: all text RapidOCR
recognises in the image, lines in reading order (top to bottom, then left to right) joined by spaces. Both
are case-folded and whitespace-normalised. Text that is missing, misspelt or extra lowers the score.

RapidOCR (``pip install rapidocr-onnxruntime``) ships its ONNX detection/recognition models inside the
package, so nothing is downloaded. It runs on the CPU, one image at a time.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .base import Reward
from .deps import require
from .runtime import cached_model
from .text_match import quoted_text, text_similarity


class OCRTextReward(Reward):
    name = "ocr"

    def __init__(self, min_confidence: float = 0.0):
        rapidocr = require("rapidocr_onnxruntime", "rapidocr-onnxruntime", "OCR text reward")
        self.engine = cached_model("rapidocr", rapidocr.__file__, torch.device("cpu"), torch.float32, rapidocr.RapidOCR)
        self.min_confidence = float(min_confidence)
        self._lock = threading.Lock()  # one shared onnxruntime engine: keep calls sequential

    def read(self, image: torch.Tensor) -> str:
        """Text in one image [H, W, 3] in [0, 1], lines in reading order joined by spaces."""
        bgr = np.ascontiguousarray((image * 255).round().byte().cpu().numpy()[..., ::-1])  # RapidOCR expects BGR arrays
        with self._lock:
            result, _ = self.engine(bgr)
        lines = [(box[0][1], box[0][0], text) for box, text, confidence in (result or [])
                 if float(confidence) >= self.min_confidence]
        return " ".join(text for _, _, text in sorted(lines))

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        targets = []
        for i, prompt in enumerate(prompts):
            quotes = quoted_text(prompt)
            if not quotes:
                raise ValueError(f"prompts[{i}] has no quoted text for the OCR reward to look for; put the wanted text "
                                 f'in quotes, e.g. a sign that says "OPEN" (got {prompt!r})')
            targets.append(" ".join(quotes))
        return torch.tensor([text_similarity(target, self.read(image)) for target, image in zip(targets, images)])
