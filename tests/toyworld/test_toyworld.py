"""Toy physics world: scenes, prompts, pixel verifiers, the reward, and the shipped base model (CPU, fast)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from srrl_core.toyworld import scenes as S
from srrl_core.toyworld import verifiers as V


def _degrade(images: torch.Tensor, sigma: float = 0.8, noise: float = 0.03, seed: int = 0) -> torch.Tensor:
    """Gaussian blur plus pixel noise: roughly what a tiny diffusion model's samples look like."""
    g = torch.Generator().manual_seed(seed)
    x = images.permute(0, 3, 1, 2)
    k = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-k ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
    x = x + noise * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def _balanced_scenes(family: str, split: str, n: int, seed: int) -> list[S.Scene]:
    """n scenes, half compliant and half violating (every violation kind included)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [S.sample_scene(rng, family, split, compliant=(i % 2 == 0)) for i in range(n)]


# --------------------------------------------------------------------------------------------------
# Verifier agreement with the generator's ground truth


@pytest.mark.parametrize("family", S.FAMILIES)
@pytest.mark.parametrize("split", S.SPLITS)
def test_verifier_agrees_with_ground_truth(family, split):
    scenes = _balanced_scenes(family, split, 160, seed=11 if split == "train" else 12)
    images = S.render_batch(scenes)
    truth = torch.tensor([s.compliant for s in scenes])
    verdict = V.verify(images, [s.prompt for s in scenes])
    assert (verdict.compliant == truth).float().mean() >= 0.99
    assert verdict.present.all()
    assert verdict.colors_ok.all()
    # The graded score separates the two classes on clean renders.
    assert verdict.score[truth].min() > 0.7 and verdict.score[~truth].max() < 0.3
    if family == "balance":  # both violation kinds occur
        assert {s.violation for s in scenes if not s.compliant} == {"toward_light", "level"}


@pytest.mark.parametrize("family", S.FAMILIES)
def test_verifier_is_robust_to_blur_and_noise(family):
    scenes = _balanced_scenes(family, "train", 120, seed=21)
    images = _degrade(S.render_batch(scenes))
    truth = torch.tensor([s.compliant for s in scenes])
    verdict = V.verify(images, [s.prompt for s in scenes])
    assert (verdict.compliant == truth).float().mean() >= 0.97


@pytest.mark.parametrize("family", S.FAMILIES)
def test_verifier_works_at_64(family):
    scenes = _balanced_scenes(family, "heldout", 40, seed=31)
    images = S.render_batch(scenes, size=64)
    assert images.shape == (40, 64, 64, 3)
    truth = torch.tensor([s.compliant for s in scenes])
    assert (V.compliance(images, [s.prompt for s in scenes]) == truth).all()


def test_non_scenes_are_never_compliant():
    g = torch.Generator().manual_seed(0)
    prompts = S.sample_prompts("train", 24, 0)
    fakes = {
        "uniform noise": torch.rand(24, 32, 32, 3, generator=g),
        "gaussian noise": (0.5 + 0.3 * torch.randn(24, 32, 32, 3, generator=g)).clamp(0, 1),
        "flat colour": torch.ones(24, 32, 32, 3) * torch.rand(24, 1, 1, 3, generator=g),
        "black": torch.zeros(24, 32, 32, 3),
        "white": torch.ones(24, 32, 32, 3),
        "smooth blobs": F.interpolate(torch.rand(24, 3, 4, 4, generator=g), size=32, mode="bilinear").permute(0, 2, 3, 1),
    }
    for name, images in fakes.items():
        verdict = V.verify(images, prompts)
        assert not verdict.compliant.any(), name
        assert verdict.score.max() < 0.05, name


def test_balance_score_is_graded_in_the_tilt():
    base = S.sample_scene(5, "balance", compliant=True)
    sign = 1.0 if base.params["heavy_side"] == "right" else -1.0
    scores = []
    for angle in (-20, -10, -4, 0, 4, 8, 12, 20):
        params = dict(base.params, angle_deg=sign * angle)
        scene = S.Scene("balance", base.prompt, angle > 0, params)
        scores.append(float(V.ToyPhysicsReward()(S.render_scene(scene)[None], base.prompt)))
    assert all(b >= a - 1e-3 for a, b in zip(scores, scores[1:])), scores
    assert scores[0] < 0.05 and scores[-1] > 0.95
    assert any(0.05 < s < 0.95 for s in scores), scores  # graded in between


def test_colour_mistakes_do_not_change_the_physics_verdict():
    scene = S.sample_scene(3, "balance", compliant=True)
    params = dict(scene.params, heavy_rgb=S.COLORS["green"], light_rgb=S.COLORS["green"])
    image = S.render_scene(S.Scene("balance", scene.prompt, True, params))[None]
    verdict = V.verify(image, scene.prompt)
    assert verdict.compliant.item() and not verdict.colors_ok.item()


# --------------------------------------------------------------------------------------------------
# Reward interface


def test_reward_interface():
    images, prompts, truth, _ = S.generate(9, seed=4)
    reward = V.ToyPhysicsReward()
    scores = reward.score(images, prompts)
    assert scores.shape == (9,) and scores.dtype == torch.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert torch.equal(reward.compliance(images, prompts), truth)
    assert reward.name == "toy_physics"
    with pytest.raises(ValueError, match="prompts"):
        reward.score(images, prompts[:2])
    with pytest.raises(ValueError, match="images"):
        reward.score(images.permute(0, 3, 1, 2), prompts)


def test_prompt_parsing_round_trips_every_template():
    for split in S.SPLITS:
        for seed in range(40):
            for family in S.FAMILIES:
                scene = S.sample_scene(seed, family, split)
                attrs = V.parse_prompt(scene.prompt)
                assert attrs["family"] == family == S.prompt_family(scene.prompt)
                p = scene.params
                if family == "balance":
                    assert (attrs["heavy_color"], attrs["light_color"], attrs["heavy_side"]) == (p["heavy_color"], p["light_color"], p["heavy_side"])
                elif family == "shadow":
                    assert (attrs["ball_color"], attrs["lamp_side"]) == (p["ball_color"], p["lamp_side"])
                else:
                    assert (attrs["liquid"], attrs["tilt_side"]) == (p["liquid"], p["tilt_side"])
    with pytest.raises(ValueError, match="prompt"):
        S.prompt_family("a cat on a sofa")
    with pytest.raises(ValueError, match="colour"):
        V.parse_prompt("a balance with a heavy block on the left")


# --------------------------------------------------------------------------------------------------
# Scenes and prompts


def test_scenes_are_deterministic():
    a, b = S.sample_scene(123), S.sample_scene(123)
    assert a == b
    assert torch.equal(S.render_scene(a), S.render_scene(b))
    assert S.sample_prompts("train", 12, 7) == S.sample_prompts("train", 12, 7)
    assert S.sample_prompts("train", 12, 7) != S.sample_prompts("train", 12, 8)
    i1, p1, c1, _ = S.generate(6, seed=3)
    i2, p2, c2, _ = S.generate(6, seed=3)
    assert torch.equal(i1, i2) and p1 == p2 and torch.equal(c1, c2)


def test_images_have_comfyui_layout():
    image = S.render_scene(S.sample_scene(0))
    assert image.shape == (32, 32, 3) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1


def test_splits_are_disjoint_and_cover_families():
    train = S.sample_prompts("train", 900, 1)
    heldout = S.sample_prompts("heldout", 900, 2)
    assert not set(train) & set(heldout)
    for prompts in (train, heldout):
        counts = {f: sum(S.prompt_family(p) == f for p in prompts) for f in S.FAMILIES}
        assert counts == {f: 300 for f in S.FAMILIES}
    water = S.sample_prompts("heldout", 30, 0, families=["water"])
    assert all(S.prompt_family(p) == "water" for p in water) and not set(water) & set(train)


def test_violation_rate_is_respected():
    scenes = S.sample_scenes(3000, seed=9, violation_rate=0.4)
    rate = 1 - sum(s.compliant for s in scenes) / len(scenes)
    assert abs(rate - 0.4) < 0.03
    assert all(s.compliant for s in S.sample_scenes(30, seed=9, violation_rate=0.0))


def test_argument_checks():
    with pytest.raises(ValueError, match="split"):
        S.sample_prompts("test", 3, 0)
    with pytest.raises(ValueError, match="family"):
        S.sample_scene(0, "rainbow")
    with pytest.raises(ValueError, match="violation_rate"):
        S.sample_scene(0, violation_rate=1.5)
    with pytest.raises(ValueError, match="size"):
        S.render_scene(S.sample_scene(0), size=8)


# --------------------------------------------------------------------------------------------------
# Text encoder, shipped weights and the base model


def test_tokenizer_uses_the_clip_vocabulary():
    from srrl_core.toyworld.text_encoder import CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN, tokenize

    tokens = tokenize(["a lamp on the left casting a shadow of a red ball", ""])
    assert tokens.shape == (2, CONTEXT_LENGTH) == (2, 32)
    assert tokens[0, 0] == SOT_TOKEN and EOT_TOKEN in tokens[0].tolist()
    assert tokens[1, :2].tolist() == [SOT_TOKEN, EOT_TOKEN] and tokens[1, 2:].eq(0).all()
    # Known ids of CLIP's BPE vocabulary (bpe_simple_vocab_16e6): "a red ball".
    assert tokenize("a red ball")[0, :5].tolist() == [SOT_TOKEN, 320, 736, 1069, EOT_TOKEN]


@pytest.fixture(scope="module")
def toy_model():
    from srrl_core.toyworld.model import load_toy_model

    return load_toy_model()


def test_shipped_weights(toy_model):
    from safetensors import safe_open

    from srrl_core.toyworld.model import WEIGHTS_DIR

    total = 0
    for name in ("unet.safetensors", "text_encoder.safetensors"):
        path = WEIGHTS_DIR / name
        total += path.stat().st_size
        with safe_open(str(path), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert total < 15 * 2 ** 20
    assert toy_model.image_size == 32 and toy_model.dtype == torch.float32
    assert not any(p.requires_grad for p in toy_model.unet.parameters())
    assert toy_model.scheduler_config["prediction_type"] == "epsilon"
    info = json.loads((WEIGHTS_DIR / "training.json").read_text())
    for split in ("heldout", "train"):
        assert info["base_compliance"][split]["n"] >= 64


def test_encode_prompts(toy_model):
    from srrl_core.toyworld.model import encode_prompts, negative_embedding

    states = encode_prompts(toy_model, ["a glass of water tilted to the left", "a lamp on the right casting a shadow of a blue ball"])
    assert states.shape == (2, 32, 64) and torch.isfinite(states).all()
    assert torch.equal(negative_embedding(toy_model, 2)[0], encode_prompts(toy_model, "")[0])
    out = toy_model.unet(torch.zeros(2, 3, 32, 32), 500, encoder_hidden_states=states).sample
    assert out.shape == (2, 3, 32, 32)


def test_base_model_reproduces_recorded_compliance(toy_model):
    """Deterministic on CPU in float32; the tolerance allows a borderline sample or two to flip with BLAS."""
    from srrl_core.toyworld.model import WEIGHTS_DIR
    from srrl_core.toyworld.train_base import reference_measurement

    recorded = json.loads((WEIGHTS_DIR / "training.json").read_text())["test_reference"]
    torch.set_num_threads(1)
    measured = reference_measurement(toy_model)
    assert measured["settings"] == recorded["settings"]
    n = recorded["settings"]["n"]
    flips = sum(a != b for a, b in zip(measured["compliant"], recorded["compliant"]))
    assert flips <= 2, (measured["compliant"], recorded["compliant"])
    assert abs(measured["compliance"] - recorded["compliance"]) <= 2 / n
    assert math.isclose(measured["score"], recorded["score"], abs_tol=0.05)


def test_train_base_smoke(tmp_path):
    from srrl_core.toyworld.model import load_toy_model
    from srrl_core.toyworld.train_base import train

    info = train(tmp_path, steps=2, batch_size=4, eval_n=0, log_every=1, warmup=2)
    assert info["recipe"]["steps"] == 2
    model = load_toy_model(weights_dir=tmp_path)
    assert model.unet.config.sample_size == 32
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["num_train_timesteps"] == 1000


def test_train_base_continues_from_saved_weights(tmp_path):
    """A continuation starts from the saved weights (its first loss is a trained model's, not a random one's) and
    records the chain, so training.json counts every optimiser step behind the weights."""
    from srrl_core.toyworld.train_base import train

    first = train(tmp_path / "a", steps=2, batch_size=4, eval_n=0, log_every=1, warmup=2)
    second = train(tmp_path / "b", steps=3, batch_size=4, eval_n=0, log_every=1, warmup=2, init_from=tmp_path / "a",
                   family_weights={"balance": 0.0, "shadow": 1.0, "water": 0.0})  # fmt: skip
    assert second["recipe"]["continued_from"] == first["recipe"]
    assert second["total_steps"] == 5 and first["total_steps"] == 2
    assert '"shadow": 1.0' in second["recipe"]["data"]
    assert not any(p.name.endswith(".part") for p in (tmp_path / "b").iterdir())


def test_pooled_text_grows_onto_the_shipped_weights_without_changing_them(toy_model, tmp_path):
    """The shipped UNet reads the prompt only through cross-attention; the grown pooled-text embedding is gated by
    a zero LayerNorm, so the grown model is the same function until training opens the gate."""
    from srrl_core.toyworld.model import WEIGHTS_DIR, encode_prompts, load_toy_model, with_pooled_text
    from srrl_core.toyworld.train_base import train

    assert toy_model.unet.config.addition_embed_type is None
    grown = with_pooled_text(toy_model)
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 100])
    states = encode_prompts(toy_model, ["a balance with a heavy red block on the left", "a glass of water tilted to the right"])
    with torch.no_grad():
        assert torch.equal(grown.unet(x, t, encoder_hidden_states=states).sample,
                           toy_model.unet(x, t, encoder_hidden_states=states).sample)  # fmt: skip
    gate = grown.unet.add_embedding.norm2.weight.requires_grad_(True)
    grown.unet(x, t, encoder_hidden_states=states).sample.square().mean().backward()
    assert gate.grad.abs().sum() > 0  # the gate learns from the first step
    assert with_pooled_text(grown) is grown
    info = train(tmp_path, steps=1, batch_size=4, eval_n=0, log_every=1, warmup=1, init_from=WEIGHTS_DIR, add_pooled_text=True)
    assert info["recipe"]["pooled_text_added"] and info["unet_config"]["addition_embed_type"] == "text"
    assert load_toy_model(weights_dir=tmp_path).unet.config.addition_embed_type == "text"
    with pytest.raises(ValueError, match="add_pooled_text .* needs init_from"):
        train(tmp_path / "new", steps=1, add_pooled_text=True)


def test_family_weights_parse_and_refuse():
    from srrl_core.toyworld.train_base import batch_stream, parse_family_weights

    assert parse_family_weights("balance=1, shadow=2") == {"balance": 1.0, "shadow": 2.0}
    assert parse_family_weights("") is None
    for bad, named in (("gravity=1", "unknown family 'gravity'"), ("shadow=-1", "must be a number >= 0"),
                       ("shadow=x", "must be a number >= 0"), ("shadow=0", "at least one weight")):
        with pytest.raises(ValueError, match=named):
            parse_family_weights(bad)
    _, prompts = next(batch_stream(0, 8, 0.4, family_weights={"water": 1.0}))
    assert {S.prompt_family(p) for p in prompts} == {"water"}, prompts
