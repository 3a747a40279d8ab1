"""The Reflective Sampler's round report as a picture: every candidate of every round with its score, the returned
result framed in green (nodes/round_report.py), called in-process on the tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.nodes import Brightness, sampler_args


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    return comfy_inprocess.load_pack()


def pixel(picture: torch.Tensor, x: int, y: int) -> tuple[int, ...]:
    return tuple(round(v * 255) for v in picture[0, y, x].tolist())


def thumbnail(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """An [H, W, 3] image in [0, 1] resized as the report resizes it."""
    array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR)).astype(int)


def test_reward_run_shows_every_candidate_and_frames_the_returned_one(comfy_inprocess, pack):
    inproc = comfy_inprocess
    rr = pack.nodes.round_report
    pos, neg = inproc.encode("a bright sky"), inproc.encode("")
    with torch.inference_mode():
        final, _, report, picture = pack.nodes.reflective_sampler.ReflectiveSampler().sample(
            inproc.model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, vae=inproc.vae, reward=Brightness(),
            reward_prompt="a bright sky", **sampler_args(steps=4, rounds=2, branches=2, selection="best", eta=0.5),
        )["result"]  # fmt: skip
        returned = inproc.vae.decode(final["samples"])[0]
    chosen_line = report.splitlines()[-1]  # "chosen for latent 0: round k, branch g, score s"
    k, g = (int(part.split()[-1]) for part in chosen_line.split(": ")[1].split(", ")[:2])
    _, lay = rr.plan(report.splitlines()[0], 3, 1, 2, tuple(returned.shape[:2]))
    assert picture.shape == (1, lay.height, lay.width, 3) and picture.dtype == torch.float32
    assert len(lay.cells) == 3 * 2  # 3 passes x 2 branches
    tw, th = lay.thumb
    for (round_k, _, branch), (left, top) in lay.cells.items():
        frame = pixel(picture, left - 1, top + th // 2)
        if (round_k, branch) == (k, g):
            assert frame == rr.CHOSEN
            # The framed picture is the latent the sampler returned, decoded.
            shown = (picture[0, top:top + th, left:left + tw] * 255).round().int().numpy()
            assert np.abs(shown - thumbnail(returned, (tw, th))).max() <= 2
        else:
            assert frame == rr.BACKGROUND


def test_scores_are_drawn_under_each_picture(pack):
    rr = pack.nodes.round_report
    images = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    carried = [torch.tensor([[[0, 1], [0, 1]]]), None]

    def draw(scores):
        return rr.render(images, scores, carried, {(1, 0, 0)}, 1, 2, "title")[0]

    low, high = draw([torch.tensor([[0.1, 0.2]]), torch.tensor([[0.3, 0.4]])]), \
        draw([torch.tensor([[0.1, 0.2]]), torch.tensor([[0.3, 0.9]])])
    _, lay = rr.plan("title", 2, 1, 2, (32, 32))
    tw, th = lay.thumb
    changed = (low != high).any(dim=-1).nonzero()
    left, top = lay.cells[(1, 0, 1)]
    # Only the label under round 1, branch 1 differs: its score is text, the pictures are untouched.
    assert changed.numel() > 0
    assert ((changed[:, 0] >= top + th) & (changed[:, 0] < top + th + rr.TEXT_H)).all()
    assert ((changed[:, 1] >= left) & (changed[:, 1] < left + tw + rr.PAD)).all()


def test_without_vae_the_pictures_are_latent_colours_and_the_last_round_is_returned(comfy_inprocess, pack):
    inproc = comfy_inprocess
    rr = pack.nodes.round_report
    pos, neg = inproc.encode("a ball"), inproc.encode("")
    with torch.inference_mode():
        _, rounds, report, picture = pack.nodes.reflective_sampler.ReflectiveSampler().sample(
            inproc.model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, **sampler_args(steps=3, rounds=1, branches=2)
        )["result"]
    _, lay = rr.plan(report.splitlines()[0], 2, 1, 2, (8, 8))
    assert picture.shape == (1, lay.height, lay.width, 3)
    colours = rr.candidate_images(inproc.model, None, inproc.model.model.process_latent_in(rounds["samples"]))
    tw, th = lay.thumb
    for (k, _, g), (left, top) in lay.cells.items():
        # Without a reward the sampler returns every branch of the last pass.
        assert pixel(picture, left - 1, top + th // 2) == (rr.CHOSEN if k == 1 else rr.BACKGROUND)
        shown = (picture[0, top:top + th, left:left + tw] * 255).round().int().numpy()
        assert np.abs(shown - thumbnail(colours[k * 2 + g], (tw, th))).max() <= 2
