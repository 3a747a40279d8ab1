"""Programmatic verifiers: model-free rewards on pixels, each in [0, 1], combinable with other rewards.

All read images [B, H, W, 3] in [0, 1] and ignore the prompt (the prompt decides *which* verifier and
parameters to use, not the verifier itself). Luminance is Rec. 709: L = 0.2126 R + 0.7152 G + 0.0722 B.
Colours are RGB triples in [0, 1]; ``parse_rgb`` reads "255,0,0", "1.0,0,0" or "#ff0000".
"""

from __future__ import annotations

import math
import re

import torch

from ..validation import check_float, check_int
from .base import Reward
from .components import component_areas, label_components

_LUMA = (0.2126, 0.7152, 0.0722)


def parse_rgb(value) -> tuple[float, float, float]:
    """A colour as (r, g, b) in [0, 1] from a triple, '#rrggbb', 'r,g,b' in 0..255, or 'r,g,b' in 0..1 (with a '.')."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
            return tuple(int(text[i:i + 2], 16) / 255 for i in (1, 3, 5))
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) == 3:
            scale = 1.0 if "." in text and max(numbers) <= 1 else 255.0
            value = tuple(n / scale for n in numbers)
    if not (isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
            and all(0 <= v <= 1 for v in value)):
        raise ValueError(f"colour must be '#rrggbb', 'r,g,b' with 0..255 integers, or three numbers in [0, 1]; got {value!r}")
    return tuple(float(v) for v in value)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] -> [B, H, W]."""
    return images @ images.new_tensor(_LUMA)


def colour_mask(images: torch.Tensor, colour, tolerance: float) -> torch.Tensor:
    """Pixels whose RGB lies within Euclidean distance ``tolerance`` of ``colour``: bool [B, H, W]."""
    target = images.new_tensor(parse_rgb(colour))
    return (images - target).norm(dim=-1) <= tolerance


class ColourPresence(Reward):
    """Is there enough of a colour? f = fraction of pixels within ``tolerance`` of ``colour``;
    score = min(1, f / min_fraction), graded so that half the wanted area scores 0.5."""

    name = "colour_presence"

    def __init__(self, colour, tolerance: float = 0.25, min_fraction: float = 0.05):
        self.colour = parse_rgb(colour)
        self.tolerance = check_float("tolerance", tolerance, low=0.0, high=math.sqrt(3))
        self.min_fraction = check_float("min_fraction", min_fraction, low=1e-6, high=1.0)

    def _score(self, images, prompts):
        fraction = colour_mask(images, self.colour, self.tolerance).float().mean(dim=(1, 2))
        return (fraction / self.min_fraction).clamp(max=1.0)


class BrightnessBand(Reward):
    """Is mean luminance m in [low, high]? 1 inside; outside it falls linearly to 0 at distance ``softness``
    (softness 0: a hard 0/1 test)."""

    name = "brightness_band"

    def __init__(self, low: float = 0.3, high: float = 0.7, softness: float = 0.1):
        self.low = check_float("low", low, low=0.0, high=1.0)
        self.high = check_float("high", high, low=self.low, high=1.0)
        self.softness = check_float("softness", softness, low=0.0, high=1.0)

    def _score(self, images, prompts):
        mean = luminance(images).mean(dim=(1, 2))
        outside = (self.low - mean).clamp(min=0) + (mean - self.high).clamp(min=0)
        if self.softness == 0:
            return (outside == 0).float()
        return (1 - outside / self.softness).clamp(min=0)


class HorizonLevel(Reward):
    """Is the dominant horizontal edge level (and, optionally, at a given height)?

    Vertical luminance gradient g[y, x] = |L[y+1, x] - L[y, x]|. In each column the strongest edge row e_x is
    found; a line e_x = a + b x is fitted by least squares weighted by edge strength. Tilt = atan(b);
    horizon height h = fitted row at the centre column, as a fraction of the image height (0 = top).
        level    = max(0, 1 - |tilt| / max_tilt_degrees)
        position = max(0, 1 - |h - target_height| / height_tolerance)   (1 when no target_height)
        score    = level * position;  0 when no edge is stronger than ``min_contrast`` (no horizon).
    """

    name = "horizon_level"

    def __init__(self, max_tilt_degrees: float = 10.0, target_height: float | None = None,
                 height_tolerance: float = 0.2, min_contrast: float = 0.05):
        self.max_tilt = check_float("max_tilt_degrees", max_tilt_degrees, low=0.01, high=90.0)
        self.target_height = None if target_height is None else check_float("target_height", target_height, 0.0, 1.0)
        self.height_tolerance = check_float("height_tolerance", height_tolerance, low=1e-3, high=1.0)
        self.min_contrast = check_float("min_contrast", min_contrast, low=0.0, high=1.0)

    def measure(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tilt in degrees [B], horizon height as a fraction of H [B], and edge strength [B]."""
        lum = luminance(images)
        if lum.shape[1] < 2:
            raise ValueError(f"images must be at least 2 pixels high to find a horizon, got H={lum.shape[1]}")
        gradient = (lum[:, 1:] - lum[:, :-1]).abs()                      # [B, H-1, W]
        strength, rows = gradient.max(dim=1)                             # per column: [B, W]
        rows = rows.float() + 0.5                                        # the edge lies between rows y and y+1
        x = torch.arange(lum.shape[2], dtype=lum.dtype, device=lum.device).expand_as(rows)
        w = strength + 1e-12
        mean_x, mean_y = (w * x).sum(1) / w.sum(1), (w * rows).sum(1) / w.sum(1)
        dx = x - mean_x[:, None]
        slope = (w * dx * (rows - mean_y[:, None])).sum(1) / ((w * dx * dx).sum(1) + 1e-12)
        centre = mean_y + slope * ((lum.shape[2] - 1) / 2 - mean_x)
        return torch.rad2deg(torch.atan(slope)), centre / lum.shape[1], strength.amax(dim=1)

    def _score(self, images, prompts):
        tilt, height, contrast = self.measure(images)
        score = (1 - tilt.abs() / self.max_tilt).clamp(min=0)
        if self.target_height is not None:
            score = score * (1 - (height - self.target_height).abs() / self.height_tolerance).clamp(min=0)
        return torch.where(contrast > self.min_contrast, score, torch.zeros_like(score))


class ObjectCount(Reward):
    """Are there exactly ``count`` blobs of a colour? Blobs: 4-connected components of the colour mask with at
    least ``min_area`` pixels (smaller specks are noise). With n blobs, score = 1 / (1 + |n - count|)."""

    name = "object_count"

    def __init__(self, colour, count: int, tolerance: float = 0.25, min_area: int = 4):
        self.colour = parse_rgb(colour)
        self.count = check_int("count", count, low=0)
        self.tolerance = check_float("tolerance", tolerance, low=0.0, high=math.sqrt(3))
        self.min_area = check_int("min_area", min_area, low=1)

    def counts(self, images: torch.Tensor) -> torch.Tensor:
        """Number of blobs in each image: [B] long."""
        areas = component_areas(label_components(colour_mask(images, self.colour, self.tolerance)))
        return torch.tensor([int((a >= self.min_area).sum()) for a in areas])

    def _score(self, images, prompts):
        return 1.0 / (1.0 + (self.counts(images) - self.count).abs().float())


class Symmetry(Reward):
    """Mirror similarity: score = 1 - mean |x - mirror(x)| over pixels and channels, in [0, 1].
    ``axis="vertical"`` mirrors left-right (a vertical mirror line), ``"horizontal"`` top-bottom."""

    name = "symmetry"

    def __init__(self, axis: str = "vertical"):
        if axis not in ("vertical", "horizontal"):
            raise ValueError(f"axis must be 'vertical' (left-right mirror) or 'horizontal' (top-bottom), got {axis!r}")
        self.axis = axis

    def _score(self, images, prompts):
        mirrored = images.flip(2 if self.axis == "vertical" else 1)
        return 1 - (images - mirrored).abs().mean(dim=(1, 2, 3))
