"""The sampler nodes called in-process on a real ComfyUI ModelPatcher (the tiny SD1.5-detectable checkpoint)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.nodes import STEPS, Brightness, sampler_args


@pytest.fixture(scope="module")
def host(comfy_inprocess):
    pack = comfy_inprocess.load_pack()
    return comfy_inprocess, pack, comfy_inprocess.nodes()


def test_zero_rounds_matches_the_stock_ksampler(host):
    inproc, pack, nodes = host
    pos, neg = inproc.encode("a red ball on a ramp"), inproc.encode("")
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    with torch.inference_mode():
        stock = nodes.KSampler().sample(inproc.model, 5, STEPS, 3.0, "euler", "normal", pos, neg, latent, denoise=1.0)[0]
        ours, rounds, report, _ = pack.nodes.reflective_sampler.ReflectiveSampler().sample(
            inproc.model, pos, neg, latent, **sampler_args()
        )["result"]
    # DDIM with eta 0 is Euler in sigma space: the same arithmetic up to float rounding.
    assert ours["samples"].shape == stock["samples"].shape == (2, 4, 8, 8)
    assert (ours["samples"] - stock["samples"]).abs().max() <= 1e-4 * stock["samples"].abs().max()
    assert rounds["samples"].shape == (2, 4, 8, 8)
    assert "0 reflective rounds" in report and f"{STEPS} model calls" in report


def test_reward_driven_rounds_and_branches(host):
    inproc, pack, _ = host
    pos, neg = inproc.encode("a bright sky"), inproc.encode("")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with torch.inference_mode():
        final, rounds, report, _ = pack.nodes.reflective_sampler.ReflectiveSampler().sample(
            inproc.model, pos, neg, latent, vae=inproc.vae, reward=Brightness(), reward_prompt="a bright sky",
            **sampler_args(rounds=2, branches=3, selection="best", eta=0.5, renoise_strength=0.5),
        )["result"]
    assert final["samples"].shape == (1, 4, 8, 8)
    assert rounds["samples"].shape == (3 * 3, 4, 8, 8)  # 3 passes x 3 branches
    assert [line.split(":")[0] for line in report.splitlines()[1:4]] == ["round 0", "round 1", "round 2"]
    scores = [[float(s) for s in line.split(": ")[1].split("carried")[0].split()] for line in report.splitlines()[1:4]]
    chosen = float(report.splitlines()[-1].rsplit("score ", 1)[1])
    assert chosen == pytest.approx(max(max(r) for r in scores), abs=1e-4)
    with torch.inference_mode():  # the chosen latent really is the brightest decoded candidate
        image = inproc.vae.decode(final["samples"])
    assert Brightness().score(image.clamp(0, 1), "x").item() == pytest.approx(chosen, abs=1e-3)


def constant_eps_model(model, seed=0):
    """A clone whose noise prediction ignores its input (through the host's own unet-function wrapper, which
    returns the denoised x0 = x - sigma * eps), making DDIM inversion exact: every step moves along the same eps."""
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.2

    def wrapper(apply_model, args):
        x, sigma = args["input"], args["timestep"].reshape(-1, 1, 1, 1)
        return x - sigma * eps.to(x)

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    return patched


@pytest.mark.parametrize("renoise_strength", [1.0, 0.5])
def test_renoise_guide_then_stock_samplers_reconstruct_the_latent(host, renoise_strength):
    inproc, pack, nodes = host
    model = constant_eps_model(inproc.model)
    pos, neg = inproc.encode("a glass of water"), inproc.encode("")
    clean = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    with torch.inference_mode():
        latent, sigmas, start = pack.nodes.renoise_guide.RenoiseGuide().renoise(
            model, pos, neg, clean, steps=10, scheduler="normal", inversion_cfg=0.1, renoise_strength=renoise_strength
        )
        assert start == 10 - round(10 * renoise_strength) and sigmas.numel() == 10 - start + 1
        assert not torch.allclose(latent["samples"], clean["samples"], atol=1e-2)
        advanced = nodes.KSamplerAdvanced().sample(
            model, "disable", 0, 10, 3.0, "euler", "normal", pos, neg, latent, start, 10000, "disable"
        )[0]["samples"]
        custom_nodes = inproc.import_module("comfy_extras.nodes_custom_sampler")
        euler = custom_nodes.KSamplerSelect().get_sampler("euler")[0]
        custom = custom_nodes.SamplerCustom().sample(model, False, 0, 3.0, pos, neg, euler, sigmas, latent)[0]["samples"]
    # Exact in arithmetic; float32 rounding over 10 steps of size up to sigma_max ~ 14.6.
    for reconstructed in (advanced, custom):
        assert (reconstructed - clean["samples"]).abs().max() <= 1e-4


def test_bad_inputs_name_the_input(host):
    inproc, pack, _ = host
    pos, neg = inproc.encode("x"), inproc.encode("")
    node = pack.nodes.reflective_sampler.ReflectiveSampler()
    with torch.inference_mode():
        with pytest.raises(ValueError, match="latent_image must be a \\[B, 4, H, W\\] latent"):
            node.sample(inproc.model, pos, neg, {"samples": torch.zeros(1, 3, 8, 8)}, **sampler_args())
        with pytest.raises(ValueError, match="vae: a VAE must be connected"):
            node.sample(inproc.model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, reward=Brightness(),
                        reward_prompt="x", **sampler_args(selection="best"))
        with pytest.raises(ValueError, match="reward_prompt"):
            node.sample(inproc.model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, vae=inproc.vae,
                        reward=Brightness(), **sampler_args(selection="best"))


def test_cancel_stops_within_one_model_call(host):
    inproc, pack, _ = host
    management = inproc.import_module("comfy.model_management")
    calls = []

    def wrapper(apply_model, args):
        calls.append(1)
        if len(calls) == 3:  # the user presses Cancel during the third model call
            management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = inproc.model.clone()
    model.set_model_unet_function_wrapper(wrapper)
    pos, neg = inproc.encode("x"), inproc.encode("")
    with torch.inference_mode(), pytest.raises(management.InterruptProcessingException):
        pack.nodes.reflective_sampler.ReflectiveSampler().sample(
            model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, **sampler_args(rounds=2)
        )
    assert len(calls) == 3
    assert not management.processing_interrupted()  # the host's flag was consumed
