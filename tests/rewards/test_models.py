"""Model-based rewards (CLIP, PickScore, aesthetic, HPSv2, ImageReward) on tiny random models saved in the
real release formats and loaded through load_reward, exactly as users load them. Each score is checked
against the model library's own pipeline (or, for ImageReward, an independent implementation of the math)."""

import os

import pytest
import torch
from PIL import Image

from tests.helpers.rewards import blip_reference, builders
from srrl_core.rewards import load_reward
from srrl_core.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_pixels

PROMPTS = ["a red ball", "a blue sign", "a red ball"]


def quantised_images(n=3, h=32, w=32, seed=0):
    # 8-bit values, so the library pipelines (PIL, uint8) see exactly the same pixels
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g).float() / 255


def to_pil(images):
    return [Image.fromarray((img * 255).round().byte().numpy()) for img in images]


@pytest.fixture(scope="module")
def openclip_files(tmp_path_factory):
    return builders.openclip_checkpoint(str(tmp_path_factory.mktemp("openclip")))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return builders.hf_clip_folder(str(tmp_path_factory.mktemp("hf_clip")))


def test_preprocessing_matches_torchvision_pipeline_on_resized_images():
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    images = torch.nn.functional.interpolate(quantised_images(2, 12, 15).permute(0, 3, 1, 2), size=(60, 75),
                                             mode="bilinear").permute(0, 2, 3, 1)
    images = (images * 255).round() / 255
    reference = Compose([Resize(32, interpolation=InterpolationMode.BICUBIC), CenterCrop(32), ToTensor(),
                         Normalize(CLIP_MEAN, CLIP_STD)])
    expected = torch.stack([reference(p) for p in to_pil(images)])
    ours = clip_pixels(images, 32)
    assert ours.shape == expected.shape == (2, 3, 32, 32)
    assert (ours - expected).abs().mean() < 0.02  # PIL vs torch bicubic + 8-bit rounding


def test_openclip_clip_score_matches_open_clip_pipeline(openclip_files):
    import open_clip

    checkpoint, config = openclip_files
    reward = load_reward("clip_openclip", checkpoint=checkpoint, config_file=config, device="cpu")
    images = quantised_images()
    scores = reward.score(images, PROMPTS)
    model, _, preprocess = open_clip.create_model_and_transforms("srrl-tiny-clip", pretrained=checkpoint)
    tokenizer = open_clip.get_tokenizer("srrl-tiny-clip")
    with torch.no_grad():
        u = model.encode_image(torch.stack([preprocess(p) for p in to_pil(images)]), normalize=True)
        v = model.encode_text(tokenizer(PROMPTS), normalize=True)
    torch.testing.assert_close(scores, (u * v).sum(-1), atol=1e-4, rtol=0)
    assert scores.dtype == torch.float32 and scores.abs().max() <= 1


def test_batched_equals_one_at_a_time_and_model_is_cached(openclip_files):
    checkpoint, config = openclip_files
    reward = load_reward("clip_openclip", checkpoint=checkpoint, config_file=config, device="cpu", max_batch=2)
    again = load_reward("clip_openclip", checkpoint=checkpoint, config_file=config, device="cpu")
    assert again.embedder.model is reward.embedder.model  # loaded once per (path, device, dtype)
    images = quantised_images(3, 40, 48)
    batched = reward.score(images, PROMPTS)
    single = torch.cat([again.score(images[i:i + 1], PROMPTS[i]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_hf_clip_and_pickscore_match_transformers_forward(hf_folder):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    images = quantised_images()
    clip = load_reward("clip_hf", folder=hf_folder, device="cpu").score(images, PROMPTS)
    pick = load_reward("pickscore", folder=hf_folder, device="cpu").score(images, PROMPTS)
    model = CLIPModel.from_pretrained(hf_folder).eval()
    tokens = CLIPTokenizer.from_pretrained(hf_folder)(PROMPTS, padding=True, return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(hf_folder)(to_pil(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels, **tokens).logits_per_image.diagonal()
    torch.testing.assert_close(pick, logits, atol=1e-3, rtol=0)  # PickScore = logit_scale * cosine
    torch.testing.assert_close(clip, logits / model.logit_scale.exp().item(), atol=1e-4, rtol=0)


def test_hf_folder_with_separate_tokenizer_folder(tmp_path):
    weights = builders.hf_clip_folder(str(tmp_path / "weights"), with_tokenizer=False)
    tokenizer = builders.clip_tokenizer_files(str(tmp_path / "tokenizer"))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_reward("pickscore", folder=weights, device="cpu")
    scores = load_reward("pickscore", folder=weights, tokenizer_folder=tokenizer, device="cpu").score(quantised_images(1), "a cat")
    assert scores.shape == (1,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("linear_probe", [False, True])
def test_aesthetic_head_on_hf_clip_matches_manual_computation(tmp_path, hf_folder, linear_probe):
    from transformers import CLIPImageProcessor, CLIPModel
    from safetensors.torch import load_file

    head = builders.aesthetic_head(str(tmp_path / "head.safetensors"), 16, linear_probe=linear_probe)
    images = quantised_images()
    # a weights file picked inside a transformers folder (as from ComfyUI's file lists) means that folder
    scores = load_reward("aesthetic", head=head, clip=os.path.join(hf_folder, "model.safetensors"),
                         device="cpu").score(images, "ignored")
    model = CLIPModel.from_pretrained(hf_folder).eval()
    pixels = CLIPImageProcessor.from_pretrained(hf_folder)(to_pil(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        x = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    state = load_file(head)
    layers = [("weight", "bias")] if linear_probe else [(f"layers.{i}.weight", f"layers.{i}.bias") for i in (0, 2, 4, 6, 7)]
    for w, b in layers:
        x = x @ state[w].T + state[b]
    torch.testing.assert_close(scores, x.squeeze(-1), atol=1e-4, rtol=0)


def test_aesthetic_rejects_bad_heads(tmp_path, hf_folder, openclip_files):
    from safetensors.torch import save_file

    wide = builders.aesthetic_head(str(tmp_path / "wide.safetensors"), 768)
    with pytest.raises(ValueError, match="768-d CLIP embeddings"):
        load_reward("aesthetic", head=wide, clip=hf_folder, device="cpu").score(quantised_images(1), "x")
    save_file({"fc.weight": torch.zeros(1, 16)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ValueError, match="unexpected key 'fc.weight'"):
        load_reward("aesthetic", head=str(tmp_path / "odd.safetensors"), clip=hf_folder, device="cpu")
    checkpoint, config = openclip_files  # open_clip image tower works too
    head = builders.aesthetic_head(str(tmp_path / "head.safetensors"), 16)
    scores = load_reward("aesthetic", head=head, clip=checkpoint, clip_config_file=config, device="cpu").score(quantised_images(2), "x")
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_hpsv2_release_format_equals_plain_open_clip_weights(tmp_path):
    hps, config = builders.openclip_checkpoint(str(tmp_path), seed=3, hpsv2_format=True)
    plain, _ = builders.openclip_checkpoint(str(tmp_path), seed=3)
    images = quantised_images()
    hps_scores = load_reward("hpsv2", checkpoint=hps, config_file=config, device="cpu").score(images, PROMPTS)
    clip_scores = load_reward("clip_openclip", checkpoint=plain, config_file=config, device="cpu").score(images, PROMPTS)
    torch.testing.assert_close(hps_scores, clip_scores, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def imagereward_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    return builders.imagereward_checkpoint(str(folder / "ImageReward.pt")), builders.bert_vocab(str(folder / "bert"))


def test_imagereward_matches_reference_math(imagereward_files):
    from transformers import BertTokenizer

    checkpoint, vocab = imagereward_files
    reward = load_reward("imagereward", checkpoint=checkpoint, tokenizer=vocab, device="cpu")
    images = quantised_images()
    prompts = ["a red ball on the ramp", "a blue sign", "dogs"]
    scores = reward.score(images, prompts)
    state = torch.load(checkpoint, weights_only=True)
    tokens = BertTokenizer.from_pretrained(vocab)(prompts, padding="max_length", max_length=35, truncation=True,
                                                  return_tensors="pt")
    pixels = clip_pixels(images, 32)
    expected = blip_reference.imagereward_scores(state, pixels, tokens["input_ids"], tokens["attention_mask"],
                                                 layers=1, vision_heads=1, text_heads=1)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    single = torch.cat([reward.score(images[i:i + 1], prompts[i]) for i in range(3)])
    torch.testing.assert_close(scores, single, atol=1e-5, rtol=0)
    # the vocab.txt path itself is accepted in place of its folder
    assert load_reward("imagereward", checkpoint=checkpoint, tokenizer=os.path.join(vocab, "vocab.txt"),
                       device="cpu").score(images[:1], "a cat").shape == (1,)


def test_imagereward_rejects_other_checkpoints(tmp_path, imagereward_files, openclip_files):
    _, vocab = imagereward_files
    torch.save({"visual.proj": torch.zeros(2, 2)}, str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="is this ImageReward.pt"):
        load_reward("imagereward", checkpoint=str(tmp_path / "other.pt"), tokenizer=vocab, device="cpu")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_reward("imagereward", checkpoint=imagereward_files[0], tokenizer=str(tmp_path), device="cpu")


def test_missing_weights_name_the_folder_and_the_file(tmp_path):
    missing = tmp_path / "models" / "srrl_rewards" / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError) as error:
        load_reward("clip_openclip", checkpoint=str(missing), model_name="ViT-H-14", device="cpu")
    assert str(missing.parent) in str(error.value) and "open_clip state dict" in str(error.value)
    (tmp_path / "pick").mkdir()
    (tmp_path / "pick" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        load_reward("pickscore", folder=str(tmp_path / "pick"), device="cpu")
    with pytest.raises(FileNotFoundError, match="ImageReward.pt"):
        load_reward("imagereward", checkpoint=str(tmp_path / "ImageReward.pt"), tokenizer=str(tmp_path), device="cpu")


def test_openclip_refuses_hub_names_and_unknown_architectures(openclip_files):
    checkpoint, _ = openclip_files
    with pytest.raises(ValueError, match="hub schemas"):
        load_reward("clip_openclip", checkpoint=checkpoint, model_name="hf-hub:laion/CLIP-ViT-H-14", device="cpu")
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        load_reward("clip_openclip", checkpoint=checkpoint, model_name="ViT-Q-99", device="cpu")


def test_transformers_weights_without_config_get_a_helpful_error(tmp_path, hf_folder):
    import shutil

    lone = tmp_path / "clip_vision_model.safetensors"  # as ComfyUI's clip_vision folder often holds them
    shutil.copy(os.path.join(hf_folder, "model.safetensors"), lone)
    with pytest.raises(ValueError, match="holds transformers CLIP weights .* config.json"):
        load_reward("aesthetic", head=builders.aesthetic_head(str(tmp_path / "h.safetensors"), 16), clip=str(lone),
                    clip_model_name="ViT-L-14-quickgelu", device="cpu")


def test_half_precision_path_matches_fp32(openclip_files, hf_folder, imagereward_files):
    # bf16 runs on CPU too, so the reduced-precision plumbing (pixels cast to the model dtype, fp32 heads and scores)
    # is exercised here; on CUDA "auto" picks fp16 through the same code
    checkpoint, config = openclip_files
    images = quantised_images()
    for backend, options in (("clip_openclip", dict(checkpoint=checkpoint, config_file=config)),
                             ("pickscore", dict(folder=hf_folder)),
                             ("imagereward", dict(checkpoint=imagereward_files[0], tokenizer=imagereward_files[1]))):
        full = load_reward(backend, device="cpu", dtype="fp32", **options).score(images, PROMPTS)
        half = load_reward(backend, device="cpu", dtype="bf16", **options)
        scores = half.score(images, PROMPTS)
        assert scores.dtype == torch.float32
        torch.testing.assert_close(scores, full, atol=0.05 * (1 + full.abs().max().item()), rtol=0)
