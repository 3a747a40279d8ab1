"""SRRL Reflective Sampler: K reflective rounds of denoise -> judge -> condition-guided re-noise -> denoise."""

from __future__ import annotations

import torch

from srrl_core.sampling import BranchNoise, derived_seeds, planned_model_calls, reflective_sample
from srrl_core.sampling.noise import wrap_seed

from . import names
from .comfy_denoiser import check_latent_channels, host_sampler, host_sigmas, parametrization_of, progress
from .inputs import check_widgets
from .reward_io import latent_scorer, split_prompts
from .round_report import round_report_image

# Denoised candidates a run may produce without opt-in: (rounds + 1) x branches x latents. Every candidate stays in
# memory for the "rounds" output (and is decoded when a reward judges), so 32 x 64 at 512 px would take gigabytes.
MAX_CANDIDATES = 256


class ReflectiveSampler:
    DESCRIPTION = (
        "Self-reflective sampling (SRRL): denoise, judge the clean result with a reward, carry it back toward noise "
        "with prompt-guided DDIM inversion, and denoise again, for K rounds. Without a reward it reflects like the "
        "SRRL reference code (no judging between rounds)."
    )
    CATEGORY = names.CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "LATENT", "STRING", "IMAGE")
    RETURN_NAMES = ("latent", "rounds", "report", "round_report")
    OUTPUT_TOOLTIPS = (
        "The chosen result: the best candidate of all rounds per latent when a reward judges; otherwise every branch of the last round.",
        "Every round's clean results (round-major), to preview the chain of thought.",
        "Per-round scores and choices.",
        "The same report as a picture for a Preview Image node: every round's candidates with their scores, the returned result framed in green.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (SD1.x, SD2, SDXL, or flow models)."}),
                "positive": ("CONDITIONING", {"tooltip": "What the image should show."}),
                "negative": ("CONDITIONING", {"tooltip": "What to steer away from (the unconditional branch of CFG)."}),
                "latent_image": ("LATENT", {"tooltip": "The latent to start from (an Empty Latent Image for text-to-image)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Noise seed; branch g starts from seed + g."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "Denoising steps of a full pass."}),
                "cfg": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "Guidance scale of every denoising pass (SRRL reference: 3.0)."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "Noise schedule, as in KSampler."}),
                "rounds": ("INT", {"default": 2, "min": 0, "max": 32, "tooltip": "Reflective rounds K; 0 is a plain DDIM sampler. Costs K x (inversion + denoising) more model calls."}),
                "branches": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Candidates G per latent and round, sampled in one batch."}),
                "renoise_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "How far each round is carried back toward noise: 1 = all the way (the reference), 0.5 = half the schedule (half the cost). Default 1: measured on the toy world (384 held-out pairs), one round at 1 gained the most per model call; 0.7 kept 66% of that gain at 80% of the calls, 0.5 kept 56% at 67% (docs/performance.md)."}),
                "inversion_cfg": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 100.0, "step": 0.05, "round": 0.01, "tooltip": "Guidance scale w_b of the condition-guided forward process (SRRL reference: 0.1)."}),
                "selection": (["best", "softmax", "last"], {"default": "best", "tooltip": "What each branch carries into the next round: the best candidate so far, a softmax draw by score, or its own last result (no reward needed)."}),
                "temperature": ("FLOAT", {"default": 1.0, "min": 0.001, "max": 100.0, "step": 0.01, "tooltip": "Softmax temperature for selection = softmax."}),
                "eta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "DDIM stochasticity; > 0 lets branches that carry the same latent diverge."}),
                "early_stop": ("BOOLEAN", {"default": False, "tooltip": "Stop reflecting once every latent's best score reaches stop_at."}),
                "stop_at": ("FLOAT", {"default": 0.9, "min": -1e6, "max": 1e6, "step": 0.01, "tooltip": "Reward threshold for early stop."}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Decodes candidates for the reward; required when a reward is connected."}),
                "reward": (names.REWARD, {"tooltip": "Judges each round's clean results. Unconnected: reflection only."}),
                "reward_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "The text the reward judges against: one line per latent, or one line for all."}),
                "allow_large_runs": ("BOOLEAN", {"default": False, "tooltip": f"Allow more than {MAX_CANDIDATES} candidates ((rounds + 1) x branches x latents); each one is kept in memory and decoded for the reward."}),
            },
        }

    def sample(self, model, positive, negative, latent_image, seed, steps, cfg, scheduler, rounds, branches,
               renoise_strength, inversion_cfg, selection, temperature, eta, early_stop, stop_at,
               vae=None, reward=None, reward_prompt="", allow_large_runs=False):  # fmt: skip
        check_widgets(ReflectiveSampler, locals())  # NaN / inf / out-of-range numbers, before any work
        latent = latent_image["samples"]
        check_latent_channels(model, latent)
        check_run_size(rounds, branches, latent.shape[0], allow_large_runs)
        score_fn = None
        if reward is not None:
            if vae is None:
                raise ValueError("vae: a VAE must be connected when a reward is connected (the reward judges decoded images)")
            prompts = split_prompts(reward_prompt, latent.shape[0], "reward_prompt")
            score_fn = latent_scorer(model, vae, reward, [p for p in prompts for _ in range(branches)])
        elif selection != "last":
            selection = "last"  # nothing to rank by: reflect like the reference code
        prompts_count = latent.shape[0]
        sigmas = host_sigmas(model, scheduler, steps)
        on_call = progress(model, planned_model_calls(steps, rounds, renoise_strength))
        holder = {}

        def routine(guided, x, schedule):
            holder["result"] = reflective_sample(
                guided, x, schedule, rounds=rounds, branches=branches, scale=cfg, eta=eta,
                inversion_scale=inversion_cfg, renoise_strength=renoise_strength,
                noise=BranchNoise(derived_seeds(seed, x.shape[0])), score_fn=score_fn, selection=selection,
                temperature=temperature, stop_at=stop_at if early_stop and score_fn else None,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            return holder["result"].passes[-1].latents.flatten(0, 1)

        import comfy.sample

        # seed + g wrapped modulo 2**64: the widget allows seeds up to 2**64 - 1, torch no more
        noise = torch.cat([comfy.sample.prepare_noise(latent, wrap_seed(seed + g)) for g in range(branches)])
        sampler = host_sampler(parametrization_of(model), branches, on_call, routine)
        comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive, negative, latent.repeat(branches, 1, 1, 1),
            noise_mask=_repeat_mask(latent_image.get("noise_mask"), branches), disable_pbar=True, seed=seed,
        )  # fmt: skip
        result = holder["result"]
        out = model.model.process_latent_out
        final = out(result.latent.float()).cpu()
        preview = out(result.all_latents.float()).cpu()
        text = report(result, prompts_count, branches, steps, renoise_strength)
        picture = round_report_image(model, vae, result, prompts_count, branches, text.splitlines()[0])
        # The "ui" text lands in the prompt's history, so headless clients can read the report too.
        return {"ui": {"text": [text]}, "result": ({"samples": final}, {"samples": preview}, text, picture)}


def check_run_size(rounds: int, branches: int, latents: int, allow_large: bool) -> None:
    candidates = (rounds + 1) * branches * latents
    if candidates > MAX_CANDIDATES and not allow_large:
        raise ValueError(
            f"rounds x branches: {rounds + 1} passes x {branches} branches x {latents} latent(s) = {candidates} "
            f"candidates, more than the {MAX_CANDIDATES} allowed by default (each is kept in memory for the rounds "
            "output and decoded for the reward); lower rounds or branches, or set allow_large_runs to true"
        )


def _repeat_mask(mask, branches):
    return None if mask is None else mask.repeat((branches,) + (1,) * (mask.ndim - 1))


def report(result, prompts: int, branches: int, steps: int, renoise_strength: float) -> str:
    lines = [
        f"SRRL reflective sampling: {len(result.passes)} denoising passes ({result.rounds} reflective rounds), "
        f"{branches} branch(es) x {prompts} latent(s), {steps} steps, renoise_strength {renoise_strength:.2f}, "
        f"{result.model_calls} model calls" + (", stopped early" if result.stopped_early else "")
    ]
    for k, record in enumerate(result.passes):
        scores = "no reward" if record.scores is None else " | ".join(
            " ".join(f"{s:.4f}" for s in row) for row in record.scores.tolist()
        )
        carried = "" if record.carried is None else "  carried: " + " | ".join(
            " ".join(f"r{r}b{b}" for r, b in row) for row in record.carried.tolist()
        )
        lines.append(f"round {k}: {scores}{carried}")
    if result.best_at is not None:
        for p, ((k, g), score) in enumerate(zip(result.best_at.tolist(), result.best_score.tolist())):
            lines.append(f"chosen for latent {p}: round {k}, branch {g}, score {score:.4f}")
    return "\n".join(lines)


NODE_CLASS_MAPPINGS = {names.REFLECTIVE_SAMPLER: ReflectiveSampler}
NODE_DISPLAY_NAME_MAPPINGS = {names.REFLECTIVE_SAMPLER: names.DISPLAY_NAMES[names.REFLECTIVE_SAMPLER]}
