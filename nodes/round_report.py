"""The Reflective Sampler's per-round report as an IMAGE, so a Preview Image node shows it on the canvas.

One row per denoising pass (round 0 .. K), one cell per candidate (grouped by latent): its image, its branch, its
reward score, for rounds after the first the candidate it was re-noised from, and a green frame around the result
the sampler returns. Candidates are decoded by the VAE when one is connected, otherwise shown in the approximate
colours of ComfyUI's latent2rgb preview.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

THUMB = 128  # longest side of a candidate's picture, in pixels
PAD = 8
LABEL_W = 84  # the "round k" column
TEXT_H = 40  # two lines under each picture
PROMPT_GAP = 16  # extra space between the candidates of different latents
BACKGROUND = (24, 24, 24)
TEXT = (230, 230, 230)
MUTED = (150, 150, 150)
CHOSEN = (60, 220, 90)
FRAME = 4
LEGEND = "green frame: the result the sampler returns"
MIN_WIDTH = 420  # room for the title even with one candidate
DECODE_BATCH = 8  # candidates per VAE call: bounds memory when a run has many


@dataclass(frozen=True)
class Layout:
    """Where each candidate's picture goes: ``cells[(round, latent, branch)] = (left, top)``."""

    width: int
    height: int
    header: int
    thumb: tuple[int, int]  # (width, height) of every picture
    cells: dict


def layout(passes: int, prompts: int, branches: int, image_hw: tuple[int, int], header_lines: int) -> Layout:
    h, w = image_hw
    scale = THUMB / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    header = PAD + 16 * header_lines + (18 if prompts > 1 else 0) + PAD  # title, then a "latent p" line
    cell_w, cell_h = tw + PAD, th + TEXT_H + PAD
    cells = {}
    for k in range(passes):
        for p in range(prompts):
            for g in range(branches):
                left = LABEL_W + p * (branches * cell_w + PROMPT_GAP) + g * cell_w
                cells[(k, p, g)] = (left, header + k * cell_h)
    width = LABEL_W + prompts * (branches * cell_w + PROMPT_GAP) - PROMPT_GAP + PAD
    return Layout(width, header + passes * cell_h, header, (tw, th), cells)


def plan(title: str, passes: int, prompts: int, branches: int, image_hw: tuple[int, int]) -> tuple[list[str], Layout]:
    """The header's lines (the title wrapped to the picture's width, then the legend) and the layout."""
    width = max(MIN_WIDTH, layout(passes, prompts, branches, image_hw, 0).width)
    lines = [*wrap(title, _font(14), width - 2 * PAD), LEGEND]
    lay = layout(passes, prompts, branches, image_hw, len(lines))
    return lines, Layout(width, lay.height, lay.header, lay.thumb, lay.cells)


def wrap(text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (at word boundaries), keeping its own line breaks."""
    lines = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                candidate = word
            line = candidate
        lines.append(line)
    return lines


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def render(images: torch.Tensor, scores: list, carried: list, chosen: set, prompts: int, branches: int,
           title: str) -> torch.Tensor:
    """The report as a ComfyUI IMAGE [1, H, W, 3] in [0, 1].

    ``images`` [passes * P * G, H, W, 3] pass-major then prompt-major; ``scores[k]`` a [P, G] tensor or None;
    ``carried[k]`` a [P, G, 2] tensor of (round, branch) that round k's slots were re-noised from, or None;
    ``chosen`` the (round, latent, branch) cells the sampler returns.
    """
    font, small = _font(14), _font(12)
    lines, lay = plan(title, len(scores), prompts, branches, tuple(images.shape[1:3]))
    canvas = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((PAD, PAD + 16 * i), line, fill=CHOSEN if line is LEGEND else TEXT, font=font)
    pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    tw, th = lay.thumb
    for (k, p, g), (left, top) in lay.cells.items():
        if p == 0 and g == 0:
            draw.text((PAD, top + th // 2 - 8), f"round {k}", fill=TEXT, font=font)
        if k == 0 and g == 0 and prompts > 1:
            draw.text((left, lay.header - PAD - 16), f"latent {p}", fill=MUTED, font=small)
        picture = Image.fromarray(pixels[(k * prompts + p) * branches + g]).resize((tw, th), Image.Resampling.BILINEAR)
        canvas.paste(picture, (left, top))
        if (k, p, g) in chosen:
            # Outside the picture (within the padding), so the picture itself stays exactly the candidate.
            draw.rectangle((left - FRAME, top - FRAME, left + tw + FRAME - 1, top + th + FRAME - 1), outline=CHOSEN,
                           width=FRAME)
        score = "" if scores[k] is None else f"  {float(scores[k][p, g]):.4f}"
        draw.text((left, top + th + FRAME + 2), f"b{g}{score}", fill=CHOSEN if (k, p, g) in chosen else TEXT, font=font)
        if k > 0 and carried[k - 1] is not None:
            r, b = (int(v) for v in carried[k - 1][p, g])
            draw.text((left, top + th + FRAME + 19), f"from r{r} b{b}", fill=MUTED, font=small)
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)[None]


def chosen_cells(result, prompts: int, branches: int) -> set:
    """(round, latent, branch) of what the sampler returns: the best candidate per latent when a reward judged,
    otherwise every branch of the last pass."""
    if result.best_at is not None:
        return {(int(k), p, int(g)) for p, (k, g) in enumerate(result.best_at.tolist())}
    last = len(result.passes) - 1
    return {(last, p, g) for p in range(prompts) for g in range(branches)}


def candidate_images(model, vae, latents: torch.Tensor) -> torch.Tensor:
    """Model-space latents [N, C, h, w] as images [N, H, W, 3]: VAE-decoded, or latent2rgb without a VAE."""
    if vae is not None:
        out = model.model.process_latent_out
        chunks = []
        for start in range(0, latents.shape[0], DECODE_BATCH):
            decoded = vae.decode(out(latents[start:start + DECODE_BATCH].float()))
            chunks.append(decoded.reshape((-1,) + decoded.shape[-3:]).float().cpu())  # video VAEs add a frame axis
        return torch.cat(chunks).clamp(0, 1)
    latent_format = model.model.latent_format
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is None:  # a latent format without a colour approximation: grey pictures, the scores still show
        return torch.full((latents.shape[0], latents.shape[2], latents.shape[3], 3), 0.5)
    rgb = torch.einsum("nchw,cr->nhwr", latents.float().cpu(), torch.tensor(factors, dtype=torch.float32))
    bias = getattr(latent_format, "latent_rgb_factors_bias", None)  # current ComfyUI adds one for newer formats
    if bias is not None:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32)
    return ((rgb + 1) / 2).clamp(0, 1)


def round_report_image(model, vae, result, prompts: int, branches: int, title: str) -> torch.Tensor:
    images = candidate_images(model, vae, result.all_latents)
    return render(images, [r.scores for r in result.passes], [r.carried for r in result.passes],
                  chosen_cells(result, prompts, branches), prompts, branches, title)
