"""The loader and scorer nodes, called in-process with a fake ``folder_paths`` (real-host tests live in tests/host)."""

import json
import os
import sys

import pytest
import torch

from tests.helpers.rewards import builders, fake_folder_paths
from tests.helpers.rewards.judge_server import JudgeServer
from tests.helpers.support import load_pack

_nodes = load_pack("srrl_pack_unit_tests").nodes  # as ComfyUI loads the pack: no top-level `nodes` module
names, reward_loader, reward_scorer = _nodes.names, _nodes.reward_loader, _nodes.reward_scorer
families = _nodes.reward_family_loaders
RewardModelLoader, register_model_folders = reward_loader.RewardModelLoader, reward_loader.register_model_folders
RewardScorer = reward_scorer.RewardScorer


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A models folder with a tiny open_clip CLIP and a transformers CLIP folder, registered as the host would."""
    models = tmp_path / "models"
    rewards = models / names.REWARDS_FOLDER
    (rewards / "tiny-hf").mkdir(parents=True)
    (models / "clip_vision").mkdir()
    builders.openclip_checkpoint(str(rewards))
    builders.hf_clip_folder(str(rewards / "tiny-hf"))
    builders.aesthetic_head(str(rewards / "head.safetensors"), 16)
    module = fake_folder_paths.make(str(models))
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    register_model_folders()
    return module


def widgets(**overrides):
    values = {"backend": "clip_openclip", "weights": "none", "aux_file": "none", "clip_architecture": "ViT-H-14",
              "vlm_endpoint": "http://127.0.0.1:8000/v1", "vlm_model": "", "api_key_env": "", "rule": "",
              "on_failure": "raise", "fallback_score": 0.0, "device": "cpu", "dtype": "auto", "options": "{}"}
    return {**values, **overrides}


def test_node_contract():
    for node, mappings, key in ((RewardModelLoader, reward_loader, names.REWARD_MODEL_LOADER),
                                (RewardScorer, reward_scorer, names.REWARD_SCORER)):
        assert mappings.NODE_CLASS_MAPPINGS == {key: node}
        assert mappings.NODE_DISPLAY_NAME_MAPPINGS[key] == names.DISPLAY_NAMES[key]
        assert node.CATEGORY == "SRRL" and callable(getattr(node, node.FUNCTION))
        assert len(node.RETURN_TYPES) == len(node.RETURN_NAMES) == len(node.OUTPUT_TOOLTIPS)
        for spec in node.INPUT_TYPES()["required"].values():
            assert spec[1].get("tooltip")
    assert RewardModelLoader.RETURN_TYPES == (names.REWARD,)
    assert "deprecated" in RewardModelLoader.DESCRIPTION.lower() and RewardModelLoader.DEPRECATED is True
    assert "deprecated" in names.DISPLAY_NAMES[names.REWARD_MODEL_LOADER]
    assert RewardScorer.OUTPUT_IS_LIST == (True, False, False, False, False)
    assert set(_nodes.NODE_CLASS_MAPPINGS) >= set(families.NODE_CLASS_MAPPINGS) | {names.REWARD_MODEL_LOADER}
    for key, node in families.NODE_CLASS_MAPPINGS.items():
        assert families.NODE_DISPLAY_NAME_MAPPINGS[key] == names.DISPLAY_NAMES[key]
        assert node.RETURN_TYPES == (names.REWARD,) and node.CATEGORY == "SRRL" and node.DESCRIPTION
        inputs = node.INPUT_TYPES()
        for spec in [*inputs["required"].values(), *inputs.get("optional", {}).values()]:
            assert spec[1].get("tooltip")


def test_register_model_folders_is_idempotent_and_keeps_user_paths(host):
    register_model_folders()
    folders, extensions = host.folder_names_and_paths[names.REWARDS_FOLDER]
    assert folders == [os.path.join(host.models_dir, names.REWARDS_FOLDER)] and ".safetensors" in extensions
    host.folder_names_and_paths[names.REWARDS_FOLDER] = (["/user/extra"], set())
    register_model_folders()
    assert host.folder_names_and_paths[names.REWARDS_FOLDER][0] == ["/user/extra", folders[0]]


def test_loader_lists_files_and_loads_each_kind(host):
    choices = RewardModelLoader.INPUT_TYPES()["required"]["weights"][0]
    assert {"none", "open_clip_model.safetensors", "srrl-tiny-clip.json", "tiny-hf/model.safetensors"} <= set(choices)
    loader = RewardModelLoader()
    (clip,) = loader.load(**widgets(weights="open_clip_model.safetensors", aux_file="srrl-tiny-clip.json"))
    (pick,) = loader.load(**widgets(backend="pickscore", weights="tiny-hf/model.safetensors"))
    (aesthetic,) = loader.load(**widgets(backend="aesthetic", weights="tiny-hf/model.safetensors", aux_file="head.safetensors"))
    (count,) = loader.load(**widgets(backend="object_count", options='{"colour": "255,0,0", "count": 1}'))
    images = torch.rand(2, 32, 32, 3)
    for reward in (clip, pick, aesthetic, count):
        assert reward.score(images, "a red ball").shape == (2,)


def test_loader_errors_name_what_is_missing(host):
    loader = RewardModelLoader()
    with pytest.raises(ValueError, match=f"choose the pickscore weights file .*models/{names.REWARDS_FOLDER}"):
        loader.load(**widgets(backend="pickscore"))
    with pytest.raises(FileNotFoundError, match="'gone.safetensors' not found; searched"):
        loader.load(**widgets(weights="gone.safetensors"))
    with pytest.raises(ValueError, match="options must be a JSON object"):
        loader.load(**widgets(backend="symmetry", options="[1, 2]"))
    with pytest.raises(ValueError, match="aesthetic head: a weights file path is required"):
        loader.load(**widgets(backend="aesthetic", weights="tiny-hf/model.safetensors"))


def test_loader_builds_a_vlm_judge_with_fallback():
    server = JudgeServer()
    server.mode = "malformed"
    try:
        (judge,) = RewardModelLoader().load(**widgets(
            backend="vlm_judge", vlm_endpoint=server.url, vlm_model="rule-judge", rule="the top is bright",
            on_failure="use fallback score", fallback_score=0.3, options='{"retries": 0}'))
        assert judge.score(torch.rand(1, 8, 8, 3), "x").item() == pytest.approx(0.3)
        assert server.requests[0]["messages"][0]["content"][0]["text"].startswith("Does this image obey: the top is bright?")
    finally:
        server.close()


def test_scorer_sorts_best_first_and_reports():
    (reward,) = RewardModelLoader().load(**widgets(backend="brightness_band",
                                                   options='{"low": 0.8, "high": 1.0, "softness": 1.0}'))
    images = torch.stack([torch.full((8, 8, 3), v) for v in (0.2, 0.9, 0.5)])
    scores, ordered, best, report, prefix = RewardScorer().score(images, "a bright room", reward)
    assert scores == pytest.approx([0.4, 1.0, 0.7])
    assert prefix == "srrl/best_score_1.0000"
    assert RewardScorer().score(images[[0]], "a bright room", reward, filename_prefix="run/x")[4] == "run/x_score_0.4000"
    torch.testing.assert_close(ordered, images[[1, 2, 0]])
    torch.testing.assert_close(best, images[[1]])
    assert "#1  image 1  score 1.0000  a bright room" in report
    per_image = RewardScorer().score(images, "one\ntwo\nthree", reward)[3]
    assert "image 0  score 0.4000  one" in per_image
    with pytest.raises(ValueError, match="give 1 line or exactly 3"):
        RewardScorer().score(images, "one\ntwo", reward)
    with pytest.raises(ValueError, match="prompts"):
        RewardScorer().score(images, "   ", reward)


# A workflow is untrusted: every file it names must come from the reward folders, and never be unpickled ----------


def test_loader_refuses_paths_outside_the_model_folders(host, tmp_path):
    outside = tmp_path / "secret.safetensors"
    builders.aesthetic_head(str(outside), 16)
    rewards = os.path.join(host.models_dir, names.REWARDS_FOLDER)
    os.symlink(outside, os.path.join(rewards, "link.safetensors"))
    loader = RewardModelLoader()
    for hostile in (str(outside), "../../secret.safetensors", "tiny-hf/../../../secret.safetensors"):
        with pytest.raises(ValueError, match="weights: .* is not allowed; choose a file by its name"):
            loader.load(**widgets(weights=hostile))
        with pytest.raises(ValueError, match="options.checkpoint: .* is not allowed"):
            loader.load(**widgets(options=f'{{"checkpoint": "{hostile}"}}'))
    with pytest.raises(ValueError, match="weights: 'link.safetensors' is a link that points outside its folder"):
        loader.load(**widgets(weights="link.safetensors"))
    nested = '{"terms": [{"backend": "aesthetic", "clip": "tiny-hf", "head": "/etc/hostname"}]}'
    with pytest.raises(ValueError, match=r"options.terms\[0\].head: '/etc/hostname' is not allowed"):
        loader.load(**widgets(backend="weighted_sum", options=nested))
    # names inside the folders still work, through options too (a folder for 'clip')
    ok = '{"terms": [{"backend": "aesthetic", "clip": "tiny-hf", "head": "head.safetensors", "device": "cpu"}]}'
    (reward,) = loader.load(**widgets(backend="weighted_sum", options=ok))
    assert reward.score(torch.rand(1, 32, 32, 3), "x").shape == (1,)


def test_loader_refuses_pickles_and_names_broken_files(host):
    rewards = os.path.join(host.models_dir, names.REWARDS_FOLDER)
    with open(os.path.join(rewards, "ImageReward.pt"), "wb") as f:
        f.write(b"\x80\x04not really a pickle")
    open(os.path.join(rewards, "empty.safetensors"), "wb").close()
    with open(os.path.join(rewards, "corrupt.safetensors"), "wb") as f:
        f.write(b"\xff" * 8 + b"{}")
    loader = RewardModelLoader()
    with pytest.raises(ValueError, match="weights: 'ImageReward.pt' is a pickle-based weights file; only .safetensors"):
        loader.load(**widgets(backend="imagereward", weights="ImageReward.pt"))
    os.makedirs(os.path.join(rewards, "pickled-hf"))
    with open(os.path.join(rewards, "pickled-hf", "pytorch_model.bin"), "wb") as f:
        f.write(b"\x80\x04")
    with pytest.raises(ValueError, match="options.folder: 'pytorch_model.bin' is a pickle-based weights file"):
        loader.load(**widgets(backend="clip_hf", options='{"folder": "pickled-hf"}'))
    with pytest.raises(ValueError, match="weights: 'empty.safetensors' is empty or truncated"):
        loader.load(**widgets(weights="empty.safetensors"))
    with pytest.raises(ValueError, match="aux_file: 'corrupt.safetensors' .* is not a readable .safetensors file"):
        loader.load(**widgets(backend="aesthetic", weights="tiny-hf/model.safetensors", aux_file="corrupt.safetensors"))


def test_loader_bounds_options_and_keeps_allow_lists(host, monkeypatch):
    loader = RewardModelLoader()
    with pytest.raises(ValueError, match="options nests"):
        loader.load(**widgets(backend="symmetry", options='{"a": ' + "[" * 5000 + "]" * 5000 + "}"))
    with pytest.raises(ValueError, match="options nests dicts/lists more than 16 levels"):
        loader.load(**widgets(backend="symmetry", options='{"a": ' + "[" * 30 + "]" * 30 + "}"))
    with pytest.raises(ValueError, match="fallback_score must be a finite number"):
        loader.load(**widgets(backend="symmetry", fallback_score=float("nan")))
    # options cannot widen the allow-lists, also nested inside weighted_sum terms
    monkeypatch.setenv("HOME", "/root")
    term = {"backend": "vlm_judge", "endpoint": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "HOME"}
    with pytest.raises(ValueError, match="SRRL_ALLOWED_KEY_VARS"):
        loader.load(**widgets(backend="weighted_sum", options=json.dumps({"terms": [term]})))
    term |= {"endpoint": "http://probe.example:8000/v1", "api_key_env": ""}
    with pytest.raises(ValueError, match="SRRL_ALLOWED_ENDPOINTS"):
        loader.load(**widgets(backend="weighted_sum", options=json.dumps({"terms": [term]})))
    with pytest.raises(ValueError, match="SRRL_ALLOWED_ENDPOINTS"):
        loader.load(**widgets(backend="vlm_judge", vlm_model="m", options='{"endpoint": "http://probe.example/v1"}'))


# One loader per reward family: only its widgets, the same folder and allow-list rules -----------------------------


def widget_names(node) -> set[str]:
    inputs = node.INPUT_TYPES()
    return set(inputs["required"]) | set(inputs.get("optional", {}))


def test_family_loaders_show_only_their_widgets():
    assert widget_names(families.OCRLoader) == {"min_confidence"}
    assert widget_names(families.VerifierLoader) == {"verifier", "parameters"}
    assert widget_names(families.ImageRewardLoader) == {"weights", "bert_vocab", "device", "dtype", "options"}
    assert not widget_names(families.CLIPScoreLoader) & {"vlm_endpoint", "endpoint", "api_key_env", "rule"}
    assert not widget_names(families.VLMJudgeLoader) & {"weights", "aux_file", "clip_architecture", "device"}
    legacy = widget_names(RewardModelLoader)
    assert all(len(widget_names(node)) < len(legacy) for node in families.NODE_CLASS_MAPPINGS.values())


def test_family_loaders_load_what_the_legacy_loader_loads(host):
    (legacy,) = RewardModelLoader().load(**widgets(backend="pickscore", weights="tiny-hf/model.safetensors"))
    (pick,) = families.CLIPScoreLoader().load("pickscore", "tiny-hf/model.safetensors", "none", "ViT-H-14", "cpu",
                                              "auto", "{}")
    (clip,) = families.CLIPScoreLoader().load("clip_openclip", "open_clip_model.safetensors", "srrl-tiny-clip.json",
                                              "ViT-H-14", "cpu", "auto", "{}")
    (aesthetic,) = families.CLIPScoreLoader().load("aesthetic", "tiny-hf/model.safetensors", "head.safetensors",
                                                   "ViT-H-14", "cpu", "auto", "{}")
    images = torch.rand(2, 32, 32, 3)
    torch.testing.assert_close(pick.score(images, "a red ball"), legacy.score(images, "a red ball"))
    for reward in (clip, aesthetic):
        assert reward.score(images, "a red ball").shape == (2,)
    with pytest.raises(ValueError, match="weights: choose the hpsv2 weights file"):
        families.CLIPScoreLoader().load("hpsv2", "none", "none", "ViT-H-14", "cpu", "auto", "{}")
    with pytest.raises(ValueError, match="weights: '/etc/hostname' is not allowed"):
        families.CLIPScoreLoader().load("clip_openclip", "/etc/hostname", "none", "ViT-H-14", "cpu", "auto", "{}")
    with pytest.raises(ValueError, match="options.checkpoint: '../x.safetensors' is not allowed"):
        families.CLIPScoreLoader().load("clip_openclip", "open_clip_model.safetensors", "none", "ViT-H-14", "cpu",
                                        "auto", '{"checkpoint": "../x.safetensors"}')


def test_imagereward_loader_refuses_pickles(host):
    rewards = os.path.join(host.models_dir, names.REWARDS_FOLDER)
    with open(os.path.join(rewards, "ImageReward.pt"), "wb") as f:
        f.write(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="weights: 'ImageReward.pt' is a pickle-based weights file"):
        families.ImageRewardLoader().load("ImageReward.pt", "none", "cpu", "auto", "{}")
    with pytest.raises(ValueError, match="weights: choose the imagereward weights file"):
        families.ImageRewardLoader().load("none", "none", "cpu", "auto", "{}")


def test_verifier_and_weighted_mix_loaders():
    (bright,) = families.VerifierLoader().load("brightness_band", '{"low": 0.8, "high": 1.0, "softness": 1.0}')
    (red,) = families.VerifierLoader().load("colour_presence", '{"colour": "255,0,0", "min_fraction": 0.5}')
    images = torch.stack([torch.full((8, 8, 3), v) for v in (0.2, 0.9)])
    torch.testing.assert_close(bright.score(images, "x"), torch.tensor([0.4, 1.0]))
    (mix,) = families.WeightedMixLoader().load(bright, 2.0, red, -1.0)
    torch.testing.assert_close(mix.score(images, "x"), 2.0 * bright.score(images, "x") - red.score(images, "x"))
    (three,) = families.WeightedMixLoader().load(bright, 1.0, bright, 1.0, reward_3=bright, weight_3=0.5)
    torch.testing.assert_close(three.score(images, "x"), 2.5 * bright.score(images, "x"))
    with pytest.raises(ValueError, match="colour_presence' needs option"):
        families.VerifierLoader().load("colour_presence", "{}")
    with pytest.raises(ValueError, match="weight_2 must be a finite number"):
        families.WeightedMixLoader().load(bright, 1.0, red, float("nan"))


def test_vlm_judge_loader_keeps_the_allow_lists_and_fallback(monkeypatch):
    monkeypatch.setenv("HOME", "/root")
    with pytest.raises(ValueError, match="SRRL_ALLOWED_KEY_VARS"):
        families.VLMJudgeLoader().load("http://127.0.0.1:9/v1", "m", "HOME", "", "raise", 0.0, "{}")
    with pytest.raises(ValueError, match="SRRL_ALLOWED_ENDPOINTS"):
        families.VLMJudgeLoader().load("http://probe.example:8000/v1", "m", "", "", "raise", 0.0, "{}")
    with pytest.raises(ValueError, match="fallback_score must be a finite number"):
        families.VLMJudgeLoader().load("http://127.0.0.1:9/v1", "m", "", "", "raise", float("inf"), "{}")
    server = JudgeServer()
    server.mode = "malformed"
    try:
        (judge,) = families.VLMJudgeLoader().load(server.url, "rule-judge", "", "the top is bright",
                                                  "use fallback score", 0.3, '{"retries": 0}')
        assert judge.score(torch.rand(1, 8, 8, 3), "x").item() == pytest.approx(0.3)
        assert server.requests[0]["messages"][0]["content"][0]["text"].startswith("Does this image obey: the top is bright?")
    finally:
        server.close()
