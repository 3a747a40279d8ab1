"""SRRL LoRA Trainer: Self-Reflective RL on the MODEL in the graph; the LoRA lands where LoraLoader finds it."""

from __future__ import annotations

import os

import torch
from PIL import Image

from srrl_core.safe_paths import resolve_in_folders
from srrl_core.training import SRRLTrainer, TrainConfig, check_lora_name
from srrl_core.training.config import scaled_curriculum
from srrl_core.training.curves import render_curves
from srrl_core.training.export import remove_stale_temp_files

from . import names
from .comfy_policy import LORA_TARGETS, host_architecture, lora_targets_for, parse_lora_targets, policy_from_host, trainable
from .inputs import check_widgets

NO_FILE = "none"
_TARGETS_TOOLTIP = (
    "Layers that get a LoRA: comma-separated suffixes of ComfyUI's module names ('*' = one name component). Empty: "
    "the model's default — SD UNets: " + ", ".join(LORA_TARGETS["unet"]) + "; Flux: " + ", ".join(LORA_TARGETS["flux"])
    + "; SD3: " + ", ".join(LORA_TARGETS["sd3"]) + " (attn2 where the model has it). Each suffix must match a layer."
)
PREVIEW_SIZE = 512  # px, the largest side of a stage preview on the canvas


class StopTraining(Exception):
    """Raised from a trainer callback when the user pressed Cancel."""


class LoRATrainer:
    DESCRIPTION = (
        "Trains a LoRA with SRRL: reflective rounds, branched stochastic rollouts, reward-normalised best/worst "
        "selection and PPO updates (arXiv 2505.22407). The canvas shows each stage's best sample as it finishes. "
        "Cancel stops after the current update and still saves the LoRA. Tested on SD1.x (eps, and patched to flow by "
        "ModelSamplingSD3), Flux and SD3 (flow); SDXL and v-prediction models take the same path untested."
    )
    CATEGORY = names.CATEGORY
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MODEL", "STRING", "IMAGE")
    RETURN_NAMES = ("model", "lora_name", "curves")
    OUTPUT_TOOLTIPS = (
        "The input model with the trained LoRA applied (strength 1).",
        "The LoRA file name in the loras folder, as LoraLoader lists it.",
        "Reward, loss and clip fraction per stage.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to train. Tested: SD1.x (eps; also patched to flow by ModelSamplingSD3), Flux and SD3 (flow, rectified-flow schedule from the model's own sampling). SDXL and v-prediction models (SD2) run the same path but are untested. Other patches on it are kept."}),
                "clip": ("CLIP", {"tooltip": "Encodes the training prompts."}),
                "vae": ("VAE", {"tooltip": "Decodes samples for the reward."}),
                "reward": (names.REWARD, {"tooltip": "Judges the decoded samples (an SRRL Reward loader)."}),
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip": "Training prompts, one per line (added to prompts_file)."}),
                "lora_name": ("STRING", {"default": "srrl_lora", "tooltip": "File name in the loras folder (letters, digits, '.', '_', '-'). Also names the run folder used to resume."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Sample width in pixels."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Sample height in pixels."}),
                "stages": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "Training stages (reference: 50). Each stage samples, selects and updates."}),
                "prompts_per_stage": ("INT", {"default": 8, "min": 1, "max": 1024, "tooltip": "Prompts drawn per stage (reference: 32)."}),
                "steps": ("INT", {"default": 20, "min": 2, "max": 200, "tooltip": "DDIM steps of every pass."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "ddim_uniform", "tooltip": "Noise schedule of the passes."}),
                "split_time": ("INT", {"default": 5, "min": 2, "max": 32, "tooltip": "Siblings per branching point (B²-DiffuRL)."}),
                "max_rounds": ("INT", {"default": 9, "min": 0, "max": 32, "tooltip": "Most reflective rounds; the curriculum adds one every 5 stages."}),
                "reflection_cfg": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "CFG of the reflective passes."}),
                "rollout_cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "CFG of the recorded rollout and the update."}),
                "inversion_cfg": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 30.0, "step": 0.05, "tooltip": "CFG w_b of the condition-guided forward process."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-2, "step": 1e-5, "round": 1e-7, "tooltip": "AdamW learning rate."}),
                "lora_rank": ("INT", {"default": 4, "min": 1, "max": 128, "tooltip": "LoRA rank of every adapted layer (see lora_targets)."}),
                "lora_alpha": ("FLOAT", {"default": 4.0, "min": 0.1, "max": 256.0, "step": 0.1, "tooltip": "LoRA alpha (scale = alpha / rank)."}),
                "seed": ("INT", {"default": 300, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Base seed: every random stream of stage n (prompts, noise, shuffling) derives from (seed, n); the same seed replays the run."}),
                "resume": ("BOOLEAN", {"default": True, "tooltip": "Continue the run of the same lora_name from its last checkpoint."}),
            },
            "optional": {
                "prompts_file": (_prompt_files(), {"tooltip": "A .txt file in the input folder, one prompt per line."}),
                "lora_targets": ("STRING", {"default": "", "tooltip": _TARGETS_TOOLTIP}),
                "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Flux only: the distilled guidance the model is conditioned on while training, as FluxGuidance sets it for sampling (3.5, FluxGuidance's default). Ignored for other models (SD1.x, SDXL, SD3); Flux schnell has no guidance input."}),
            },
        }

    def train(self, model, clip, vae, reward, prompts, lora_name, width, height, stages, prompts_per_stage, steps,
              scheduler, split_time, max_rounds, reflection_cfg, rollout_cfg, inversion_cfg, learning_rate,
              lora_rank, lora_alpha, seed, resume, prompts_file=NO_FILE, lora_targets="", guidance=3.5):  # fmt: skip
        import comfy.model_management
        import comfy.sd
        import comfy.utils
        import folder_paths

        check_widgets(LoRATrainer, locals())  # NaN / inf / out-of-range numbers, before any work
        arch = host_architecture(model)  # an unsupported model is refused here, naming its class
        targets = lora_targets_for(arch, model.model.diffusion_model, parse_lora_targets(lora_targets))
        lora_name = check_lora_name(lora_name)  # "x.safetensors" is the same name as "x"
        prompt_list = _read_prompts(prompts, prompts_file)
        run_dir = os.path.join(folder_paths.get_output_directory(), "srrl_training", lora_name)
        config = TrainConfig(
            steps=steps, stages=stages, prompts_per_stage=prompts_per_stage, split_time=split_time,
            max_rounds=max_rounds, reflection_scale=reflection_cfg, rollout_scale=rollout_cfg,
            inversion_scale=inversion_cfg, learning_rate=learning_rate, lora_rank=lora_rank, lora_alpha=lora_alpha,
            seed=seed, resume=resume, output_dir=run_dir, lora_name=lora_name, progress=False, **scaled_curriculum(steps),
        )  # fmt: skip
        bar = comfy.utils.ProgressBar(stages)
        best = BestSample(reward)

        def on_event(event: str, info: dict) -> None:
            if comfy.model_management.processing_interrupted():
                raise StopTraining  # the last completed update stays in the weights
            if event == "model_call":
                best.reset()  # the reward calls after a stage's last model call score its finished samples
            elif event == "stage_end":
                bar.update_absolute(info["stage"] + 1, stages, best.preview())

        lora_path = os.path.join(folder_paths.get_folder_paths("loras")[0], f"{lora_name}.safetensors")
        remove_stale_temp_files(os.path.dirname(lora_path))  # left by a save killed midway (older versions)
        patched = model.clone()
        # DiTs (Flux, SD3) train with gradient checkpointing, trading compute for activation memory; UNets without.
        with trainable(patched, gradient_checkpointing=arch.is_dit):
            policy = policy_from_host(patched, clip, vae, width, height, scheduler, steps, name=_model_name(patched),
                                      lora_targets=targets, guidance=guidance if arch.family == "flux" else None)  # fmt: skip
            trainer = SRRLTrainer(policy, best, prompt_list, config, callbacks=[on_event])
            try:
                trainer.train()
            except StopTraining:
                trainer.export_lora(lora_path, key_style="ldm")
                comfy.model_management.throw_exception_if_processing_interrupted()
            trainer.export_lora(lora_path, key_style="ldm")
            history = list(trainer.history)
        lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
        trained = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)[0]
        curves = torch.from_numpy(render_curves(history))[None]
        summary = f"SRRL LoRA '{lora_name}': {len(history)} stage(s) run, saved to {lora_path}"
        noop = sum(1 for h in history if h.get("noop"))
        if noop:
            summary += (f"\n{noop} of {len(history)} stage(s) changed nothing (no sibling kept, nothing stochastic, zero "
                        "gradient or learning rate 0)" + ("; the LoRA never moved: check that the reward varies between "
                                                          "samples" if noop == len(history) else ""))
        return {"ui": {"text": [summary]}, "result": (trained, f"{lora_name}.safetensors", curves)}


class BestSample:
    """The reward as the trainer calls it, remembering the best-scoring image it judged since ``reset()``.

    The trainer reports every model call ("model_call") and scores a stage's finished samples after its last one,
    so resetting on each model call leaves, at "stage_end", the best of the stage's final samples: the canvas
    preview of that stage.
    """

    def __init__(self, reward):
        self.reward = reward
        self.reset()

    def reset(self) -> None:
        self.image, self.score = None, float("-inf")

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        scores = torch.as_tensor(self.reward(images, prompts)).float()
        ranked = torch.nan_to_num(scores.detach().cpu(), nan=float("-inf"))
        index = int(ranked.argmax())
        if self.image is None or float(ranked[index]) > self.score:
            self.image, self.score = images[index].detach().float().cpu().clone(), float(ranked[index])
        return scores

    def preview(self, max_size: int = PREVIEW_SIZE):
        """("JPEG", PIL image, max_size), what ComfyUI's ProgressBar sends to the canvas; None before any score."""
        if self.image is None:
            return None
        pixels = (self.image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return ("JPEG", Image.fromarray(pixels), max_size)


def _prompt_files() -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return [NO_FILE]
    folder = folder_paths.get_input_directory()
    files = sorted(f for f in os.listdir(folder) if f.endswith(".txt")) if os.path.isdir(folder) else []
    return [NO_FILE] + files


def _read_prompts(text: str, prompts_file: str) -> list[str]:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if prompts_file and prompts_file != NO_FILE:
        import folder_paths

        # Checked here: the host does not validate optional inputs, so any path could arrive.
        try:
            path = resolve_in_folders(prompts_file, [folder_paths.get_input_directory()], "prompts_file")
        except FileNotFoundError:
            raise ValueError(f"prompts_file: {prompts_file!r} is not a file in the input folder") from None
        if not path.endswith(".txt"):
            raise ValueError(f"prompts_file: expected a .txt file from the input folder, got {prompts_file!r}")
        try:
            with open(path, encoding="utf-8") as handle:
                lines += [line.strip() for line in handle if line.strip()]
        except UnicodeDecodeError as error:
            raise ValueError(f"prompts_file: {prompts_file!r} is not UTF-8 text (byte {error.start}); save it as "
                             "UTF-8") from None
    if not lines:
        raise ValueError("prompts: give at least one training prompt (one per line here, or in prompts_file)")
    return lines


def _model_name(model) -> str:
    return type(model.model.model_config).__name__


NODE_CLASS_MAPPINGS = {names.LORA_TRAINER: LoRATrainer}
NODE_DISPLAY_NAME_MAPPINGS = {names.LORA_TRAINER: names.DISPLAY_NAMES[names.LORA_TRAINER]}
