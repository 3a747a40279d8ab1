"""The reflective loop: K = 0 is a plain sampler, selection, early stop, branch independence, bad input."""

import pytest
import torch

from srrl_core.sampling import (
    BranchNoise,
    ClassifierFreeGuidance,
    EpsilonPrediction,
    karras_sigmas,
    planned_model_calls,
    prior_latent,
    reflective_sample,
    sample,
)
from tests.helpers.support import GaussianDenoiser

SIGMAS = karras_sigmas(0.03, 15.0, 12)


def setup(prompts=2, branches=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(prompts, 2, 4, 4, generator=gen)
    model = GaussianDenoiser(EpsilonPrediction())
    guided = ClassifierFreeGuidance(model, means, torch.zeros(1, 2, 4, 4))
    noise = torch.randn(prompts * branches, 2, 4, 4, generator=gen)
    return guided, prior_latent(guided, noise, SIGMAS[0]), model


def brightness(latents):  # a "reward" that prefers a bright first channel
    return latents[:, 0].mean(dim=(1, 2))


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_zero_rounds_is_the_plain_sampler_bit_for_bit(eta):
    guided, x, _ = setup()
    plain = sample(guided, x, SIGMAS, scale=3.0, eta=eta, noise=BranchNoise.for_batch(5, 6)).latent
    result = reflective_sample(guided, x, SIGMAS, rounds=0, branches=3, scale=3.0, eta=eta, noise=BranchNoise.for_batch(5, 6))
    assert torch.equal(result.latent, plain)
    assert len(result.passes) == 1 and result.rounds == 0 and result.model_calls == 12


def test_best_selection_never_lowers_the_best_so_far_and_returns_it():
    guided, x, _ = setup()
    result = reflective_sample(
        guided, x, SIGMAS, rounds=4, branches=3, scale=2.0, eta=1.0, renoise_strength=0.5,
        noise=BranchNoise.for_batch(0, 6), score_fn=brightness, selection="best",
    )  # fmt: skip
    assert len(result.passes) == 5 and result.rounds == 4
    best_so_far = torch.cummax(torch.stack([r.scores.max(dim=1).values for r in result.passes]), dim=0).values
    assert torch.equal(result.best_score, best_so_far[-1])
    assert torch.equal(brightness(result.latent), result.best_score)
    for p, (k, g) in enumerate(result.best_at.tolist()):
        assert torch.equal(result.latent[p], result.passes[k].latents[p, g])
    # Elitism: every slot of the next round was carried from the best candidate known at that time.
    for k, record in enumerate(result.passes[:-1]):
        running = best_so_far[k]
        for p in range(2):
            for r, g in record.carried[p].tolist():
                assert result.passes[r].scores[p, g] == running[p]
    # Reflection found something better than the first round for at least one prompt.
    assert (result.best_score > result.passes[0].scores.max(dim=1).values).any()


def test_model_calls_follow_the_plan_and_partial_renoising_saves_calls():
    guided, x, model = setup()
    for renoise_strength in (1.0, 0.5, 0.25):
        model.calls = 0
        result = reflective_sample(guided, x, SIGMAS, rounds=3, branches=3, scale=2.0, renoise_strength=renoise_strength)
        assert result.model_calls == model.calls == planned_model_calls(12, 3, renoise_strength)
    assert planned_model_calls(12, 3, 0.25) < planned_model_calls(12, 3, 1.0) == 12 + 3 * 24


def test_early_stop_triggers_once_every_prompt_reaches_the_threshold():
    guided, x, _ = setup()
    first = reflective_sample(guided, x, SIGMAS, rounds=0, branches=3, scale=2.0, score_fn=brightness, selection="best")
    threshold = first.best_score.min().item()
    result = reflective_sample(
        guided, x, SIGMAS, rounds=5, branches=3, scale=2.0, score_fn=brightness, selection="best", stop_at=threshold
    )
    # Stopped in round 0 before re-noising: one pass, no reflective round, the plain sampler's calls.
    assert result.stopped_early and len(result.passes) == 1 and result.rounds == 0 and result.model_calls == 12
    unreachable = reflective_sample(
        guided, x, SIGMAS, rounds=2, branches=3, scale=2.0, score_fn=brightness, selection="best", stop_at=1e9
    )
    assert not unreachable.stopped_early and len(unreachable.passes) == 3 and unreachable.rounds == 2
    # Stopped in round 1: its re-noising and the final pass are skipped, so it costs what a K = 1 run costs.
    guided, x, _ = setup(prompts=1, seed=3)
    kwargs = dict(rounds=3, branches=3, scale=2.0, renoise_strength=0.5, score_fn=brightness, selection="best")
    passes = reflective_sample(guided, x, SIGMAS, **kwargs).passes
    first, second = (float(r.scores.max()) for r in passes[:2])
    assert first < second
    later = reflective_sample(guided, x, SIGMAS, stop_at=second, **kwargs)
    assert later.stopped_early and len(later.passes) == 2 and later.rounds == 1
    assert later.model_calls == planned_model_calls(12, later.rounds, 0.5)


def test_branches_are_independent_but_reproducible():
    guided, x, _ = setup(prompts=1, branches=3)
    kwargs = dict(rounds=2, scale=2.0, eta=1.0, renoise_strength=0.5)
    run = lambda: reflective_sample(guided, x, SIGMAS, branches=3, noise=BranchNoise([7, 8, 9]), **kwargs)  # noqa: E731
    a, b = run(), run()
    assert torch.equal(a.latent, b.latent)
    assert not torch.allclose(a.latent[0], a.latent[1]) and not torch.allclose(a.latent[1], a.latent[2])
    # Branch 1 alone, with its own seed, gives the same result as inside the group.
    single_guided = ClassifierFreeGuidance(guided.denoiser, guided.positive, guided.negative)
    alone = reflective_sample(single_guided, x[1:2], SIGMAS, branches=1, noise=BranchNoise([8]), **kwargs)
    assert torch.allclose(alone.latent[0], a.latent[1], atol=1e-6)


def test_softmax_selection_is_reproducible_with_its_generator():
    guided, x, _ = setup()
    run = lambda: reflective_sample(  # noqa: E731
        guided, x, SIGMAS, rounds=2, branches=3, scale=2.0, eta=0.5, noise=BranchNoise.for_batch(0, 6),
        score_fn=brightness, selection="softmax", temperature=0.1, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    a, b = run(), run()
    assert torch.equal(a.latent, b.latent)
    assert all(torch.equal(r.carried, s.carried) for r, s in zip(a.passes[:-1], b.passes[:-1]))


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(rounds=-1), r"rounds must be .*>= 0"),
        (dict(branches=0), r"branches must be .*>= 1"),
        (dict(renoise_strength=2.0), r"renoise_strength must be .*\[0.0, 1.0\]"),
        (dict(renoise_strength=-0.1), r"renoise_strength must be .*\[0.0, 1.0\]"),
        (dict(sigmas=SIGMAS[:1]), r"sigmas must be .*steps >= 1"),
        (dict(selection="best"), r"selection 'best' needs a reward"),
        (dict(selection="greedy"), r"selection must be one of"),
        (dict(branches=4), r"latent batch \(6\) must be a multiple of branches \(4\)"),
    ],
)
def test_bad_input_names_the_argument_and_its_range(override, message):
    guided, x, _ = setup()
    kwargs = dict(rounds=1, branches=3, scale=2.0, sigmas=SIGMAS) | override
    sigmas = kwargs.pop("sigmas")
    with pytest.raises(ValueError, match=message):
        reflective_sample(guided, x, sigmas, **kwargs)


def test_nan_latent_and_mismatched_conditioning_are_rejected():
    guided, x, _ = setup()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="latent contains NaN"):
        reflective_sample(guided, bad, SIGMAS, rounds=1, branches=3, scale=2.0)
    mismatched = ClassifierFreeGuidance(guided.denoiser, torch.zeros(4, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"positive conditioning batch \(4\) must divide the latent batch \(6\)"):
        reflective_sample(mismatched, x, SIGMAS, rounds=1, branches=3, scale=2.0)
