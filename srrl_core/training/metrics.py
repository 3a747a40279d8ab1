"""Per-stage metrics: TensorBoard (when installed) and a JSON-lines file, written by the main process only."""

from __future__ import annotations

import json
import logging
import math
import os

logger = logging.getLogger(__name__)


class MetricsWriter:
    def __init__(self, output_dir: str, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.writer = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                logger.info("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def write(self, stage: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, **metrics}) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(key, value, stage)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
