"""Pixel verifiers: does an image obey its prompt's physical rule?

Each verifier parses the prompt back into the attributes it needs (colours, sides, liquid), segments the
image by soft nearest-reference-colour classification (references: the scene colours of
``scenes.py``; an "other" class absorbs blends and unknown colours), and measures one geometric quantity:

``balance``  vertical offset between the heavy and the light block's centroids (image heights).
             Rule: the heavy block sits lower by more than ``BALANCE_THRESHOLD``.
``shadow``   horizontal offset of the shadow's centroid from the ball's, signed so that "away from the
             lamp" is positive (image widths). Rule: > 0.
``water``    slope dy/dx of the liquid's top edge, a robust (Theil-Sen) fit over the columns holding
             liquid, ignoring steep pairs (the glass walls). Rule: |slope| < ``WATER_THRESHOLD``.

Before the rule is checked the scene must be *present and faithful*: every object has enough mass, the
heavy block is on the prompt's side, the lamp is on the prompt's side, the glass leans the prompt's way.
All geometry is in normalised image units, so any square size works (32 and 64 are tested).

The graded score is ``presence * faithfulness * rule``, each a smooth function (clamped ratio or
sigmoid) of the measurements, so it is 1 for clean compliant scenes, 0 for clean violating ones and
graded in between for ambiguous images. ``compliant`` is the hard decision: every factor past its
threshold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..rewards.base import Reward, validate_images, validate_prompts
from . import scenes as S

BALANCE_THRESHOLD = 0.065  # image heights; clean compliant scenes measure 0.13 .. 0.23, level 0, wrong < 0
WATER_THRESHOLD = 0.16  # |dy/dx|; clean level surfaces measure ~0, violating 0.32 .. 0.62
SHADOW_THRESHOLD = 0.0  # image widths; clean scenes measure about +-0.15 .. 0.2

_SIDE_WORDS = {"left": -1.0, "right": 1.0}


@dataclass
class Verdict:
    """Per-image measurements and decisions (tensors [B])."""

    score: torch.Tensor  # graded reward in [0, 1]
    compliant: torch.Tensor  # bool: present, faithful and rule satisfied
    present: torch.Tensor  # bool: every object found and faithful to the prompt
    margin: torch.Tensor  # the rule's measurement minus its threshold (positive = compliant), NaN if absent
    colors_ok: torch.Tensor  # bool: object colours match the prompt's (reported only; not part of compliance)
    families: list[str]


# --------------------------------------------------------------------------------------------------
# Prompt parsing


def parse_prompt(prompt: str) -> dict:
    """Recover the attributes a verifier needs: family plus colours/sides/liquid; ValueError if missing."""
    family = S.prompt_family(prompt)
    text = prompt.lower()
    clauses = [c.strip() for c in re.split(r",| and ", text) if c.strip()]

    def side_in(clause: str) -> str | None:
        found = re.findall(r"\b(left|right)\b", clause)
        return found[0] if found else None

    if family == "balance":
        out = {"family": family}
        for weight in ("heavy", "light"):
            m = re.search(rf"\b{weight} (\w+)", text)
            if not m or m.group(1) not in S.COLORS:
                raise ValueError(f"prompt must name the colour of the {weight} block (one of {sorted(S.COLORS)}), got {prompt!r}")
            out[f"{weight}_color"] = m.group(1)
            out[f"{weight}_side"] = next((side_in(c) for c in clauses if re.search(rf"\b{weight}\b", c) and side_in(c)), None)
        if out["heavy_side"] is None and out["light_side"] is None:
            raise ValueError(f"prompt must say on which side (left/right) the heavy block is, got {prompt!r}")
        if out["heavy_side"] is None:
            out["heavy_side"] = "left" if out["light_side"] == "right" else "right"
        if out["heavy_color"] == out["light_color"]:
            raise ValueError(f"prompt must give the two blocks different colours, got {prompt!r}")
        return out
    if family == "shadow":
        colours = [w for w in re.findall(r"[a-z]+", text) if w in S.COLORS]
        lamp = next((side_in(c) for c in clauses if "lamp" in c and side_in(c)), None) or side_in(text)
        if not colours or lamp is None:
            raise ValueError(f"prompt must name the ball's colour and the lamp's side (left/right), got {prompt!r}")
        return {"family": family, "ball_color": colours[0], "lamp_side": lamp}
    liquid = next((name for name in S.LIQUIDS if name in text), None)
    if liquid is None and "juice" in text:
        liquid = "orange juice"
    if liquid is None and "wine" in text:
        liquid = "red wine"
    side = side_in(text)
    if liquid is None or side is None:
        raise ValueError(f"prompt must name a liquid ({sorted(S.LIQUIDS)}) and the tilt side (left/right), got {prompt!r}")
    return {"family": family, "liquid": liquid, "tilt_side": side}


# --------------------------------------------------------------------------------------------------
# Measurement helpers


def _grid(n: int):
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.meshgrid(c, c)  # x, y


def _mass_centroid(p: np.ndarray, x: np.ndarray, y: np.ndarray):
    m = float(p.sum())
    if m <= 1e-6:
        return 0.0, float("nan"), float("nan")
    return m / p.size, float((p * x).sum() / m), float((p * y).sum() / m)


def _spread(p: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Standard deviations of x and y under the mask (image units); large for scattered masks."""
    m = float(p.sum())
    if m <= 1e-6:
        return float("inf"), float("inf")
    mx, my = (p * x).sum() / m, (p * y).sum() / m
    return float(np.sqrt((p * (x - mx) ** 2).sum() / m)), float(np.sqrt((p * (y - my) ** 2).sum() / m))


def _within(value: float, limit: float) -> float:
    """1 up to ``limit``, falling linearly to 0 at 1.25 x ``limit`` (objects must be compact, not scattered)."""
    return max(0.0, min(1.0, (1.25 * limit - value) / (0.25 * limit)))


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def _ramp(mass: float, minimum: float) -> float:
    return max(0.0, min(1.0, mass / minimum))


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _chroma(img: np.ndarray) -> np.ndarray:
    return img.max(-1) - img.min(-1)


def _saturated(img: np.ndarray, low: float = 0.3, width: float = 0.2) -> np.ndarray:
    """Soft mask of strongly coloured pixels (objects, liquids); backgrounds, greys and the floor stay out."""
    return np.clip((_chroma(img) - low) / width, 0.0, 1.0)


def _yellow(img: np.ndarray) -> np.ndarray:
    """Soft mask of yellow (red and green high, blue low): the lamp."""
    return np.clip((np.minimum(img[..., 0], img[..., 1]) - img[..., 2] - 0.15) / 0.45, 0.0, 1.0)


def _grey_dark(img: np.ndarray, reference_luma: float, depth: float) -> np.ndarray:
    """Soft mask of grey pixels darker than ``reference_luma`` (full weight ``depth`` below it)."""
    dark = np.clip((reference_luma - _luma(img)) / depth, 0.0, 1.0)
    grey = np.clip(1.0 - (_chroma(img) - 0.12) / 0.15, 0.0, 1.0)
    return dark * grey


def _nearest_color(img: np.ndarray, weight: np.ndarray, names) -> str | None:
    m = weight.sum()
    if m <= 1e-6:
        return None
    weight = weight ** 2  # emphasise cores over blurred rims
    m = weight.sum()
    mean = (img * weight[..., None]).sum((0, 1)) / m
    return min(names, key=lambda n: float(((mean - np.asarray(S.COLORS.get(n) or S.LIQUIDS[n])) ** 2).sum()))


# Each measure returns (score, compliant, present, margin, colors_ok).


def _measure_balance(img: np.ndarray, attrs: dict):
    n = img.shape[0]
    x, y = _grid(n)
    # The blocks are the strongly coloured pixels, whatever their colour; the balance itself is dark grey,
    # and its centroid (fulcrum and beam are symmetric about the pivot) splits left from right.
    sat = _saturated(img, 0.2, 0.15)  # no floor here: a lower threshold keeps blurred blocks whole
    dark = _grey_dark(img, float(np.median(_luma(_border_pixels(img)))), 0.45)
    md, pivot_x, _ = _mass_centroid(dark, x, y)
    if md < 0.01 or math.isnan(pivot_x):
        return 0.0, False, False, float("nan"), False
    left = (x < pivot_x).astype(np.float32)
    ml, xl, yl = _mass_centroid(sat * left, x, y)
    mr, xr, yr = _mass_centroid(sat * (1 - left), x, y)
    minimum = 0.01  # clean blocks cover 0.029 .. 0.044 of the image
    presence = _ramp(ml, minimum) * _ramp(mr, minimum)
    # Compactness: noise or a flood of colour is not two blocks (clean blocks: mass <= 0.05, spread <= 0.07).
    presence *= _within(ml, 0.1) * _within(mr, 0.1)
    for sx, sy in (_spread(sat * left, x, y), _spread(sat * (1 - left), x, y)):
        presence *= _within(sx, 0.12) * _within(sy, 0.2)
    if presence == 0.0 or math.isnan(xl) or math.isnan(xr):
        return 0.0, False, False, float("nan"), False
    spread = xr - xl  # clean scenes: 0.5 .. 0.6
    apart = _sig((spread - 0.3) / 0.04)
    heavy_right = attrs["heavy_side"] == "right"
    drop = (yr - yl) if heavy_right else (yl - yr)  # positive when the heavy block is lower
    rule = _sig((drop - BALANCE_THRESHOLD) / 0.02)
    present = presence >= 1.0 and spread > 0.3
    heavy_mask, light_mask = (sat * (1 - left), sat * left) if heavy_right else (sat * left, sat * (1 - left))
    colors_ok = (_nearest_color(img, heavy_mask, S.COLORS) == attrs["heavy_color"]
                 and _nearest_color(img, light_mask, S.COLORS) == attrs["light_color"])
    return presence * apart * rule, present and drop > BALANCE_THRESHOLD, present, drop - BALANCE_THRESHOLD, colors_ok


def _box3(img: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edges replicated)."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    n, m = img.shape[:2]
    return sum(p[i:i + n, j:j + m] for i in range(3) for j in range(3)) / 9.0


def _border_pixels(img: np.ndarray) -> np.ndarray:
    return np.concatenate([img[0], img[:, 0], img[:, -1]], axis=0)


def _measure_shadow(img: np.ndarray, attrs: dict):
    n = img.shape[0]
    x, y = _grid(n)
    # The shadow: grey pixels darker than the floor, below the horizon. Darkness is linear in the image,
    # so its centroid survives blur; saturated pixels (the ball and its blends) are left out.
    floor_luma = float(np.median(_luma(img[y[:, 0] > 0.9].reshape(-1, 3))))
    shadow = _grey_dark(img, floor_luma, 0.4) * (y > 0.5)
    yellow = _yellow(img)
    ball = _saturated(img, 0.28, 0.15) * (1.0 - np.clip(yellow * 2, 0, 1)) * (y > 0.35)
    ms, xs, _ = _mass_centroid(shadow, x, y)
    ml, xl, _ = _mass_centroid(yellow * (y < 0.45), x, y)
    mb, xb, _ = _mass_centroid(ball, x, y)
    presence = _ramp(ms, 0.006) * _ramp(ml, 0.005) * _ramp(mb, 0.007)
    # Compactness (clean: ball mass <= 0.06, lamp spread <= 0.045, shadow height spread <= 0.03).
    presence *= _within(mb, 0.15) * _within(max(_spread(yellow * (y < 0.45), x, y)), 0.12) * _within(_spread(shadow, x, y)[1], 0.1)
    if presence == 0.0 or math.isnan(xs) or math.isnan(xl) or math.isnan(xb):
        return 0.0, False, False, float("nan"), False
    lamp_sign = _SIDE_WORDS[attrs["lamp_side"]]
    lamp_side = (xl - xb) * lamp_sign  # clean scenes: 0.27 .. 0.44
    faithful = _sig((lamp_side - 0.12) / 0.04)
    away = (xs - xb) * -lamp_sign  # positive when the shadow falls away from the lamp
    rule = _sig((away - SHADOW_THRESHOLD) / 0.03)
    present = presence >= 1.0 and lamp_side > 0.12
    colors_ok = _nearest_color(img, ball, S.BALL_COLORS) == attrs["ball_color"]
    return presence * faithful * rule, present and away > SHADOW_THRESHOLD, present, away - SHADOW_THRESHOLD, colors_ok


def _surface_slope(p_liquid: np.ndarray) -> float:
    """Theil-Sen slope (dy/dx, pixels per pixel) of the liquid's top edge, ignoring steep (wall) pairs."""
    n = p_liquid.shape[0]
    col_mass = p_liquid.sum(0)
    cols = np.nonzero(col_mass >= max(1.0, n / 32))[0]
    if len(cols) < 3:
        return float("nan")
    cum = np.cumsum(p_liquid[:, cols], axis=0)  # [H, C]
    tops = []
    for j in range(len(cols)):
        c = cum[:, j]
        i = int(np.searchsorted(c, 0.5))  # first row whose cumulative mass reaches 0.5
        prev = c[i - 1] if i > 0 else 0.0
        frac = (0.5 - prev) / max(c[i] - prev, 1e-6)
        tops.append(i + frac)
    tops = np.asarray(tops)
    xs = cols.astype(np.float32)
    dx = xs[None, :] - xs[:, None]
    dy = tops[None, :] - tops[:, None]
    iu = np.triu_indices(len(cols), k=2)
    slopes = dy[iu] / dx[iu]
    slopes = slopes[np.abs(slopes) < 1.2]
    if len(slopes) == 0:
        return float("nan")
    return float(np.median(slopes))


def _glass_lean(mask: np.ndarray) -> float:
    """Lean of the glass body's long axis from vertical, in degrees (positive: top leans right)."""
    n = mask.shape[0]
    x, y = _grid(n)
    m = mask.sum()
    if m <= 1e-6:
        return float("nan")
    mx, my = (mask * x).sum() / m, (mask * y).sum() / m
    cxx = (mask * (x - mx) ** 2).sum() / m
    cyy = (mask * (y - my) ** 2).sum() / m
    cxy = (mask * (x - mx) * (y - my)).sum() / m
    vals, vecs = np.linalg.eigh(np.array([[cxx, cxy], [cxy, cyy]], dtype=np.float64))
    vx, vy = vecs[:, 1]
    if vy > 0:
        vx, vy = -vx, -vy
    return math.degrees(math.atan2(vx, -vy))


def _measure_water(img: np.ndarray, attrs: dict):
    n = img.shape[0]
    x, y = _grid(n)
    above_table = (y < 0.86).astype(np.float32)
    # The liquid: strongly coloured pixels (any liquid colour); the glass: everything unlike the background.
    smooth = _box3(img)  # tames sampling grain (noise would tilt the surface fit and leak into the moments)
    p_liq = _saturated(smooth) * above_table
    bg = np.median(_border_pixels(img)[: n * 2], axis=0)  # top row and upper parts of the side columns
    glass = np.clip((np.sqrt(((smooth - bg) ** 2).sum(-1)) - 0.1) / 0.06, 0.0, 1.0) * (y < 0.82)  # clear of the table
    ml, mg = float(p_liq.mean()), float(glass.mean())
    presence = _ramp(ml, 0.025) * _ramp(mg, 0.10)
    # Compactness (clean: glass mass <= 0.36 with y spread <= 0.18; liquid x spread <= 0.12).
    presence *= _within(mg, 0.45) * _within(_spread(glass, x, y)[1], 0.21) * _within(_spread(p_liq, x, y)[0], 0.18)
    slope = _surface_slope(p_liq)
    lean = _glass_lean(glass)
    if presence == 0.0 or math.isnan(slope) or math.isnan(lean):
        return 0.0, False, False, float("nan"), False
    lean_signed = lean * _SIDE_WORDS[attrs["tilt_side"]]  # clean scenes: ~18 .. 32 degrees
    faithful = _sig((lean_signed - 8.0) / 3.0)
    rule = _sig((WATER_THRESHOLD - abs(slope)) / 0.04)
    present = presence >= 1.0 and lean_signed > 8.0
    colors_ok = _nearest_color(img, p_liq, S.LIQUIDS) == attrs["liquid"]
    return presence * faithful * rule, present and abs(slope) < WATER_THRESHOLD, present, WATER_THRESHOLD - abs(slope), colors_ok


_MEASURES = {"balance": _measure_balance, "shadow": _measure_shadow, "water": _measure_water}


def verify(images: torch.Tensor, prompts: Sequence[str] | str) -> Verdict:
    """Judge images [B, H, W, 3] in [0, 1] (square) against their prompts."""
    images = validate_images(images)
    if images.shape[1] != images.shape[2] or images.shape[1] < 16:
        raise ValueError(f"images must be square and at least 16x16, got {tuple(images.shape[1:3])}")
    prompts = validate_prompts(prompts, images.shape[0])
    arr = images.detach().float().cpu().numpy()
    scores, compliant, present, margins, colors, families = [], [], [], [], [], []
    cache: dict[str, dict] = {}
    for img, prompt in zip(arr, prompts):
        attrs = cache.get(prompt) or cache.setdefault(prompt, parse_prompt(prompt))
        s, c, pr, m, ok = _MEASURES[attrs["family"]](img, attrs)
        scores.append(s), compliant.append(c), present.append(pr), margins.append(m), colors.append(ok)
        families.append(attrs["family"])
    return Verdict(
        score=torch.tensor(scores, dtype=torch.float32),
        compliant=torch.tensor(compliant, dtype=torch.bool),
        present=torch.tensor(present, dtype=torch.bool),
        margin=torch.tensor(margins, dtype=torch.float32),
        colors_ok=torch.tensor(colors, dtype=torch.bool),
        families=families,
    )


def compliance(images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
    """Bool tensor [B]: the scene is present, faithful to the prompt, and obeys its physical rule."""
    return verify(images, prompts).compliant


class ToyPhysicsReward(Reward):
    """Graded physics-compliance reward in [0, 1] for toy-world prompts (1 compliant, 0 violating)."""

    name = "toy_physics"

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return verify(images, prompts).score

    def compliance(self, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        return compliance(images, prompts)

    def verify(self, images: torch.Tensor, prompts: Sequence[str] | str) -> Verdict:
        return verify(images, prompts)
