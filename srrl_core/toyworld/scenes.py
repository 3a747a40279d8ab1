"""Procedural physics scenes: prompts with a physical rule, rendered compliant or violating.

Three families, each with a compact parameter space, a few phrasing templates and a renderer that
can draw the scene obeying its rule (COMPLIANT) or breaking it in a controlled way (VIOLATING):

``balance``  a balance with a heavy and a light block; the beam must tilt down toward the heavy block.
             Violations: the beam tilts toward the light block, or stays level.
``shadow``   a ball on the floor lit by a lamp on one side; its shadow must fall on the opposite side.
             Violation: the shadow falls on the lamp's side.
``water``    liquid in a glass tilted to one side; the liquid's surface must stay level (horizontal).
             Violation: the surface tilts with the glass (it stays perpendicular to the glass's axis).

Geometry lives in normalised coordinates (x to the right, y downward, both in [0, 1]), so one scene
renders at any size; shapes are anti-aliased by 4x supersampling. Everything is deterministic given a
seed or a ``numpy.random.Generator``. Images are float32 tensors [H, W, 3] in [0, 1] (ComfyUI IMAGE
layout per image).

Splits: every family has training templates and held-out templates, and a set of held-out attribute
combinations (heavy/light colour pairs, ball colour/size pairs, liquid/tilt-strength pairs). A ``"heldout"`` prompt always uses a
held-out template or a held-out combination (or both), so no held-out prompt string ever occurs in the
``"train"`` split.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ..validation import check_choice, check_float, check_int

FAMILIES = ("balance", "shadow", "water")
SPLITS = ("train", "heldout")
SIDES = ("left", "right")

#: Named colours (RGB in [0, 1]) used for objects.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.16),
    "blue": (0.16, 0.32, 0.86),
    "green": (0.18, 0.66, 0.24),
    "yellow": (0.95, 0.80, 0.12),
    "purple": (0.58, 0.24, 0.74),
    "orange": (0.96, 0.52, 0.10),
}
#: Liquids for the water family and their colours.
LIQUIDS: dict[str, tuple[float, float, float]] = {
    "water": (0.25, 0.58, 0.95),
    "orange juice": (0.97, 0.60, 0.12),
    "red wine": (0.62, 0.08, 0.26),
}

# Fixed scene colours (the verifiers use the same references).
BALANCE_BG = (0.93, 0.92, 0.88)
BALANCE_DARK = (0.30, 0.30, 0.33)
SHADOW_WALL = (0.86, 0.89, 0.95)
SHADOW_FLOOR = (0.76, 0.68, 0.56)
SHADOW_DARK = (0.16, 0.15, 0.17)
SHADOW_ALPHA = 0.85
LAMP_COLOR = (1.00, 0.88, 0.25)
LAMP_STEM = (0.35, 0.33, 0.32)
WATER_BG = (0.93, 0.93, 0.90)
WATER_TABLE = (0.62, 0.50, 0.38)
GLASS_WALL = (0.36, 0.42, 0.48)
GLASS_INSIDE = (0.76, 0.87, 0.96)

# Attribute sets per family.
BALANCE_COLORS = ("red", "blue", "green", "yellow", "purple", "orange")
_TOO_CLOSE = {frozenset(("red", "orange")), frozenset(("yellow", "orange"))}
BALANCE_PAIRS = tuple((a, b) for a in BALANCE_COLORS for b in BALANCE_COLORS if a != b and frozenset((a, b)) not in _TOO_CLOSE)
BALANCE_HELDOUT_PAIRS = frozenset({("green", "red"), ("blue", "purple"), ("yellow", "blue"), ("orange", "green"), ("purple", "yellow")})
BALL_COLORS = ("red", "blue", "green", "purple")
# Held-out combinations never pair an attribute with a side (the rule's subject), so that held-out
# prompts test new wordings and attribute mixes rather than unseen colour->side correlations.
SHADOW_HELDOUT_COMBOS = frozenset({("green", "big "), ("purple", "small "), ("red", "")})  # (ball colour, size)
WATER_HELDOUT_COMBOS = frozenset({("red wine", "slightly tilted"), ("water", "tilted")})  # (liquid, tilt word)

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "balance": {
        "train": (
            "a balance with a heavy {hc} block on the {hs} and a light {lc} block on the {ls}",
            "a balance scale, heavy {hc} block on the {hs}, light {lc} block on the {ls}",
            "a light {lc} block on the {ls} and a heavy {hc} block on the {hs} of a balance",
        ),
        "heldout": (
            "a heavy {hc} block on the {hs} side of a balance and a light {lc} block on the {ls} side",
            "a balance scale holding a light {lc} block on the {ls} and a heavy {hc} block on the {hs}",
        ),
    },
    "shadow": {
        "train": (
            "a lamp on the {ls} casting a shadow of a {size}{bc} ball",
            "a {size}{bc} ball on the floor lit by a lamp on the {ls}",
            "a {size}{bc} ball and its shadow, with a lamp on the {ls}",
        ),
        "heldout": (
            "a lamp on the {ls} shining on a {size}{bc} ball on the floor",
            "the shadow of a {size}{bc} ball lit by a lamp on the {ls}",
        ),
    },
    "water": {
        "train": (
            "{liquid} in a glass {tilt} to the {ts}",
            "a glass of {liquid} {tilt} to the {ts}",
            "a glass {tilt} to the {ts}, {fill} of {liquid}",
        ),
        "heldout": (
            "a glass {fill} of {liquid}, {tilt} to the {ts}",
            "{liquid} in a glass that is {tilt} to the {ts}",
        ),
    },
}
_TILT_WORDS = {"slightly tilted": (18.0, 23.0), "tilted": (25.0, 32.0)}
_FILL_WORDS = {"half full": (0.36, 0.46), "nearly full": (0.50, 0.58)}
_SIZE_WORDS = {"small ": (0.085, 0.100), "": (0.105, 0.120), "big ": (0.125, 0.140)}


@dataclass(frozen=True)
class Scene:
    """One scene: its family, prompt, whether it obeys the rule, and every parameter the renderer needs."""

    family: str
    prompt: str
    compliant: bool
    params: dict = field(default_factory=dict)
    #: How the rule is broken when not compliant ("toward_light", "level", "same_side", "with_glass"), else "".
    violation: str = ""


def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(check_int("seed", seed_or_rng, 0))


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _jitter_color(rng: np.random.Generator, rgb, amount: float = 0.025) -> tuple[float, float, float]:
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0.0, 1.0)) for c in rgb)


# --------------------------------------------------------------------------------------------------
# Scene sampling (attributes, prompt, geometry)


def _choose_template_and_combo(rng, family: str, split: str, combos, heldout_combos):
    """Heldout: a held-out template (any combo) or a training template with a held-out combo."""
    train_combos = [c for c in combos if c not in heldout_combos]
    if split == "train":
        return _pick(rng, TEMPLATES[family]["train"]), _pick(rng, train_combos)
    if rng.random() < 0.5:
        return _pick(rng, TEMPLATES[family]["heldout"]), _pick(rng, list(combos))
    return _pick(rng, TEMPLATES[family]["train"]), _pick(rng, sorted(heldout_combos))


def _sample_balance(rng, split: str, compliant: bool) -> Scene:
    combos = [(hc, lc, hs) for hc, lc in BALANCE_PAIRS for hs in SIDES]
    held = {(hc, lc, hs) for hc, lc in BALANCE_HELDOUT_PAIRS for hs in SIDES}
    template, (hc, lc, hs) = _choose_template_and_combo(rng, "balance", split, combos, held)
    ls = "left" if hs == "right" else "right"
    prompt = template.format(hc=hc, lc=lc, hs=hs, ls=ls)
    heavy_sign = 1.0 if hs == "right" else -1.0
    magnitude = _u(rng, 14.0, 22.0)
    violation = ""
    if compliant:
        angle = heavy_sign * magnitude
    else:
        violation = "toward_light" if rng.random() < 0.5 else "level"
        angle = -heavy_sign * magnitude if violation == "toward_light" else 0.0
    params = dict(
        heavy_color=hc, light_color=lc, heavy_side=hs,
        angle_deg=angle,
        pivot=(0.5 + _u(rng, -0.04, 0.04), 0.60 + _u(rng, -0.03, 0.03)),
        half_length=_u(rng, 0.36, 0.40),
        arm=_u(rng, 0.28, 0.31),
        block=_u(rng, 0.17, 0.21),
        bg=_jitter_color(rng, BALANCE_BG),
        heavy_rgb=_jitter_color(rng, COLORS[hc], 0.03),
        light_rgb=_jitter_color(rng, COLORS[lc], 0.03),
    )
    return Scene("balance", prompt, compliant, params, violation)


def _sample_shadow(rng, split: str, compliant: bool) -> Scene:
    combos = [(bc, size) for bc in BALL_COLORS for size in _SIZE_WORDS]
    template, (bc, size) = _choose_template_and_combo(rng, "shadow", split, combos, SHADOW_HELDOUT_COMBOS)
    ls = _pick(rng, SIDES)
    prompt = template.format(bc=bc, ls=ls, size=size)
    lamp_sign = 1.0 if ls == "right" else -1.0
    shadow_sign = -lamp_sign if compliant else lamp_sign
    floor_y = 0.62 + _u(rng, -0.03, 0.03)
    radius = _u(rng, *_SIZE_WORDS[size])
    params = dict(
        ball_color=bc, lamp_side=ls, size_word=size.strip() or "medium",
        shadow_sign=shadow_sign,
        floor_y=floor_y,
        ball=(0.5 + _u(rng, -0.06, 0.06), floor_y + 0.08 - radius, radius),
        lamp=(0.5 + lamp_sign * _u(rng, 0.33, 0.38), _u(rng, 0.15, 0.22), _u(rng, 0.075, 0.09)),
        shadow_len=_u(rng, 0.17, 0.21),
        wall=_jitter_color(rng, SHADOW_WALL),
        floor=_jitter_color(rng, SHADOW_FLOOR),
        ball_rgb=_jitter_color(rng, COLORS[bc], 0.03),
    )
    return Scene("shadow", prompt, compliant, params, "" if compliant else "same_side")


def _sample_water(rng, split: str, compliant: bool) -> Scene:
    combos = [(lq, tw) for lq in LIQUIDS for tw in _TILT_WORDS]
    template, (liquid, tilt_word) = _choose_template_and_combo(rng, "water", split, combos, WATER_HELDOUT_COMBOS)
    ts = _pick(rng, SIDES)
    fill_word = _pick(rng, tuple(_FILL_WORDS))
    prompt = template.format(liquid=liquid, ts=ts, tilt=tilt_word, fill=fill_word)
    tilt_sign = 1.0 if ts == "right" else -1.0
    params = dict(
        liquid=liquid, tilt_side=ts, tilt_word=tilt_word, fill_word=fill_word,
        angle_deg=tilt_sign * _u(rng, *_TILT_WORDS[tilt_word]),
        fill=_u(rng, *_FILL_WORDS[fill_word]),
        center=(0.5 + _u(rng, -0.05, 0.05), 0.47 + _u(rng, -0.03, 0.03)),
        half_width=_u(rng, 0.17, 0.20),
        half_height=_u(rng, 0.27, 0.30),
        level_surface=bool(compliant),
        bg=_jitter_color(rng, WATER_BG),
        liquid_rgb=_jitter_color(rng, LIQUIDS[liquid], 0.03),
    )
    return Scene("water", prompt, compliant, params, "" if compliant else "with_glass")


_SAMPLERS = {"balance": _sample_balance, "shadow": _sample_shadow, "water": _sample_water}


def sample_scene(seed_or_rng, family: str | None = None, split: str = "train", compliant: bool | None = None,
                 violation_rate: float = 0.4) -> Scene:
    """Draw one scene. ``family=None`` picks one uniformly; ``compliant=None`` violates with ``violation_rate``."""
    rng = _rng(seed_or_rng)
    check_choice("split", split, SPLITS)
    violation_rate = check_float("violation_rate", violation_rate, 0.0, 1.0)
    if family is None:
        family = _pick(rng, FAMILIES)
    check_choice("family", family, FAMILIES)
    if compliant is None:
        compliant = bool(rng.random() >= violation_rate)
    return _SAMPLERS[family](rng, split, bool(compliant))


def sample_scenes(n: int, seed: int, split: str = "train", violation_rate: float = 0.4,
                  families: Sequence[str] | None = None) -> list[Scene]:
    """``n`` scenes from one seed; families cycle (balance, shadow, water, ...) unless ``families`` says otherwise."""
    n = check_int("n", n, 0)
    fams = tuple(families) if families is not None else FAMILIES
    for fam in fams:
        check_choice("families", fam, FAMILIES)
    rng = _rng(seed)
    return [sample_scene(rng, fams[i % len(fams)], split, None, violation_rate) for i in range(n)]


def sample_prompts(split: str, n: int, seed: int, families: Sequence[str] | None = None) -> list[str]:
    """``n`` prompts of the given split (families cycle so every family is equally represented)."""
    check_choice("split", split, SPLITS)
    return [scene.prompt for scene in sample_scenes(n, seed, split, 0.0, families)]


_FAMILY_WORDS = (("balance", ("balance", "scale", "block")), ("shadow", ("shadow", "lamp", "ball")),
                 ("water", ("glass", "water", "juice", "wine")))


def prompt_family(prompt: str) -> str:
    """Which family a prompt belongs to (by its key nouns); ValueError when none matches."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    for family, keys in _FAMILY_WORDS:
        if words.intersection(keys):
            return family
    raise ValueError(f"prompt must describe a balance, a lamp and a ball, or a tilted glass, got {prompt!r}")


# --------------------------------------------------------------------------------------------------
# Rendering


@lru_cache(maxsize=4)
def _supersampled_grid(n: int):
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = np.meshgrid(coords, coords)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


class _Canvas:
    """A supersampled canvas: shapes are painted as binary coverage, then box-filtered down."""

    def __init__(self, size: int, bg, ss: int = 4):
        self.size, self.ss = size, ss
        self.x, self.y = _supersampled_grid(size * ss)  # [n, n], x to the right, y downward
        self.img = np.empty((size * ss, size * ss, 3), dtype=np.float32)
        self.img[:] = np.asarray(bg, dtype=np.float32)

    def paint(self, mask: np.ndarray, rgb, alpha: float = 1.0) -> None:
        rgb = np.asarray(rgb, dtype=np.float32)
        if alpha >= 1.0:
            self.img[mask] = rgb
        else:
            self.img[mask] = self.img[mask] * (1.0 - alpha) + rgb * alpha

    def result(self) -> torch.Tensor:
        n, ss = self.size, self.ss
        out = self.img.reshape(n, ss, n, ss, 3).sum(axis=(1, 3)) * (1.0 / (ss * ss))
        return torch.from_numpy(np.clip(out, 0.0, 1.0).astype(np.float32))

    # shapes -------------------------------------------------------------------------------------
    def rect(self, cx, cy, half_w, half_h, angle_rad=0.0) -> np.ndarray:
        """A rectangle rotated by ``angle_rad`` (positive: clockwise on screen, since y points down)."""
        c, s = math.cos(angle_rad), math.sin(angle_rad)
        dx, dy = self.x - cx, self.y - cy
        u = dx * c + dy * s  # along the rotated x axis
        v = -dx * s + dy * c
        return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)

    def disc(self, cx, cy, r) -> np.ndarray:
        return (self.x - cx) ** 2 + (self.y - cy) ** 2 <= r * r

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0

    def polygon(self, points) -> np.ndarray:
        """A convex polygon given counter-clockwise or clockwise."""
        pts = np.asarray(points, dtype=np.float32)
        inside_pos = np.ones_like(self.x, dtype=bool)
        inside_neg = np.ones_like(self.x, dtype=bool)
        for i in range(len(pts)):
            (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % len(pts)]
            cross = (x1 - x0) * (self.y - y0) - (y1 - y0) * (self.x - x0)
            inside_pos &= cross >= 0
            inside_neg &= cross <= 0
        return inside_pos | inside_neg


def _render_balance(p: dict, size: int) -> torch.Tensor:
    cv = _Canvas(size, p["bg"])
    px, py = p["pivot"]
    a = math.radians(p["angle_deg"])
    d = np.array([math.cos(a), math.sin(a)])  # along the beam, toward the right end
    up = np.array([math.sin(a), -math.cos(a)])  # the beam's upward normal
    thick = 0.028
    # fulcrum: a triangle whose apex holds the beam
    cv.paint(cv.polygon([(px, py), (px - 0.11, py + 0.24), (px + 0.11, py + 0.24)]), BALANCE_DARK)
    centre = np.array([px, py]) + up * thick
    cv.paint(cv.rect(centre[0], centre[1], p["half_length"], thick, a), BALANCE_DARK)
    # base plate
    cv.paint(cv.rect(px, py + 0.25, 0.17, 0.018), BALANCE_DARK)
    half = p["block"] / 2
    for side, rgb in ((p["heavy_side"], p["heavy_rgb"]), ("left" if p["heavy_side"] == "right" else "right", p["light_rgb"])):
        t = p["arm"] if side == "right" else -p["arm"]
        c = centre + d * t + up * (thick + half)
        cv.paint(cv.rect(c[0], c[1], half, half, a), rgb)
    return cv.result()


def _render_shadow(p: dict, size: int) -> torch.Tensor:
    cv = _Canvas(size, p["wall"])
    cv.paint(cv.y >= p["floor_y"], p["floor"])
    bx, by, r = p["ball"]
    base_y = by + r
    length = p["shadow_len"]
    sx = bx + p["shadow_sign"] * (length * 0.95)
    cv.paint(cv.ellipse(sx, base_y - 0.005, length, 0.05), SHADOW_DARK, SHADOW_ALPHA)
    cv.paint(cv.disc(bx, by, r), p["ball_rgb"])
    lx, ly, lr = p["lamp"]
    cv.paint(cv.rect(lx, ly / 2 - 0.02, 0.012, ly / 2 + 0.02), LAMP_STEM)  # the cord it hangs from
    cv.paint(cv.disc(lx, ly, lr), LAMP_COLOR)
    return cv.result()


def _render_water(p: dict, size: int) -> torch.Tensor:
    cv = _Canvas(size, p["bg"])
    cv.paint(cv.y >= 0.88, WATER_TABLE)
    a = math.radians(p["angle_deg"])
    axis_up = np.array([math.sin(a), -math.cos(a)])  # from the bottom of the glass toward its rim
    cx, cy = p["center"]
    w, h, wall = p["half_width"], p["half_height"], 0.035
    # glass: walls and bottom around the inside, open at the top (the rim)
    inside = cv.rect(cx, cy, w, h, a)
    outer = cv.rect(cx - axis_up[0] * wall / 2, cy - axis_up[1] * wall / 2, w + wall, h + wall / 2, a)
    cv.paint(outer & ~inside, GLASS_WALL)
    cv.paint(inside, GLASS_INSIDE)
    # liquid: the inside below a line through the point at fraction `fill` up the axis
    point = np.array([cx, cy]) + axis_up * (h * (2 * p["fill"] - 1))
    if p["level_surface"]:
        below = cv.y >= point[1]
    else:  # the surface stays perpendicular to the glass's axis: it tilts with the glass
        below = ((cv.x - point[0]) * axis_up[0] + (cv.y - point[1]) * axis_up[1]) <= 0
    cv.paint(inside & below, p["liquid_rgb"])
    return cv.result()


_RENDERERS = {"balance": _render_balance, "shadow": _render_shadow, "water": _render_water}


def render_scene(scene: Scene, size: int = 32) -> torch.Tensor:
    """Render ``scene`` as a float32 tensor [size, size, 3] in [0, 1]."""
    size = check_int("size", size, 16, 512)
    return _RENDERERS[scene.family](scene.params, size)


def render_batch(scenes: Sequence[Scene], size: int = 32) -> torch.Tensor:
    """Render scenes into one tensor [B, size, size, 3]."""
    return torch.stack([render_scene(s, size) for s in scenes]) if scenes else torch.zeros(0, size, size, 3)


def generate(n: int, seed: int, split: str = "train", violation_rate: float = 0.4, size: int = 32,
             families: Sequence[str] | None = None):
    """Convenience: ``(images [n, H, W, 3], prompts, compliant bool [n], scenes)`` from one seed."""
    scenes = sample_scenes(n, seed, split, violation_rate, families)
    images = render_batch(scenes, size)
    return images, [s.prompt for s in scenes], torch.tensor([s.compliant for s in scenes], dtype=torch.bool), scenes
