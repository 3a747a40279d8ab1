"""Training curves as a picture (reward, loss, clip fraction per stage), drawn with PIL so no plotting library
is needed where the trainer runs (a ComfyUI node returns it as an IMAGE)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

PANELS = (("reward_mean", "reward (mean per stage)"), ("loss_mean", "PPO loss"), ("clip_fraction_mean", "clip fraction"))
PANEL_W, PANEL_H, MARGIN = 360, 220, 36


def render_curves(history: list[dict], panels: tuple[tuple[str, str], ...] = PANELS) -> np.ndarray:
    """An RGB float image [H, W, 3] in [0, 1]: one panel per (metric key, title), stage on the x axis."""
    image = Image.new("RGB", (PANEL_W * len(panels), PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    for index, (key, title) in enumerate(panels):
        points = [(h["stage"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
        _panel(draw, index * PANEL_W, title, points)
    return np.asarray(image, dtype=np.float32) / 255.0


def _panel(draw: ImageDraw.ImageDraw, left: int, title: str, points: list[tuple[float, float]]) -> None:
    x0, y0, x1, y1 = left + MARGIN, 24, left + PANEL_W - 12, PANEL_H - MARGIN
    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
    draw.text((x0, 6), title, fill=(0, 0, 0))
    if not points:
        draw.text((x0 + 8, (y0 + y1) // 2), "no data yet", fill=(120, 120, 120))
        return
    xs, ys = zip(*points)
    x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_low, y_high = min(ys), max(ys)
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    def to_pixel(x, y):
        return (x0 + (x - x_low) / (x_high - x_low) * (x1 - x0), y1 - (y - y_low) / (y_high - y_low) * (y1 - y0))
    pixels = [to_pixel(x, y) for x, y in points]
    if len(pixels) > 1:
        draw.line(pixels, fill=(31, 119, 180), width=2)
    for px, py in pixels:
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=(31, 119, 180))
    draw.text((left + 2, y0), f"{y_high:.3g}", fill=(80, 80, 80))
    draw.text((left + 2, y1 - 10), f"{y_low:.3g}", fill=(80, 80, 80))
    draw.text((x0, y1 + 6), f"stage {x_low:g}", fill=(80, 80, 80))
    draw.text((x1 - 60, y1 + 6), f"stage {x_high:g}", fill=(80, 80, 80))
