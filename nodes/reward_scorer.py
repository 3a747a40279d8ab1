"""SRRL Reward Scorer: score an IMAGE batch with a REWARD, sort it best first, report the scores."""

from __future__ import annotations

from srrl_core.rewards import rank

from . import names
from .reward_io import split_prompts


class RewardScorer:
    DESCRIPTION = "Scores every image of a batch against its prompt with a reward and sorts the batch best first."
    CATEGORY = names.CATEGORY
    FUNCTION = "score"
    RETURN_TYPES = ("FLOAT", "IMAGE", "IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("scores", "sorted_images", "best_image", "report", "best_filename_prefix")
    OUTPUT_IS_LIST = (True, False, False, False, False)
    OUTPUT_TOOLTIPS = (
        "One score per image, in the batch's original order.",
        "The batch sorted by score, best first.",
        "The best-scoring image.",
        "Each image's rank, batch index, score and prompt.",
        ("filename_prefix + '_score_' + the best score (e.g. srrl/best_score_0.8123): connect it to a Save Image's "
         "filename_prefix to keep the score in the file name."),
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images to judge (a batch)."}),
            "prompts": ("STRING", {"default": "", "multiline": True, "tooltip":
                "What each image should show: one line for all images, or one line per image. For OCR, put the "
                "wanted text in quotes."}),
            "reward": (names.REWARD, {"tooltip": "A reward from an SRRL Reward loader."}),
        }, "optional": {
            "filename_prefix": ("STRING", {"default": "srrl/best", "tooltip":
                "Start of the best_filename_prefix output; the best score is appended."}),
        }}

    def score(self, images, prompts, reward, filename_prefix="srrl/best"):
        ranking = rank(reward, images, split_prompts(prompts, images.shape[0], "prompts"))
        order = ranking.order
        best = float(ranking.scores[order[0]])
        prefix = f"{filename_prefix}_score_{best:.4f}"
        return (ranking.scores.tolist(), images[order], images[order[:1]], ranking.report(), prefix)


NODE_CLASS_MAPPINGS = {names.REWARD_SCORER: RewardScorer}
NODE_DISPLAY_NAME_MAPPINGS = {names.REWARD_SCORER: names.DISPLAY_NAMES[names.REWARD_SCORER]}
