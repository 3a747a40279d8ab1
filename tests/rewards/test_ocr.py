"""OCR text reward with RapidOCR's real shipped models on text rendered with PIL's scalable default font."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from srrl_core.rewards import load_reward
from srrl_core.rewards.text_match import levenshtein, normalise_text, quoted_text, text_similarity


def rendered(text: str, size=(256, 96)) -> torch.Tensor:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((20, 20), text, fill="black", font=ImageFont.load_default(size=40))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)


@pytest.fixture(scope="module")
def ocr():
    return load_reward("ocr")


def test_quoted_text_finds_all_quote_styles_and_ignores_apostrophes():
    assert quoted_text('a sign that says "HELLO"') == ["HELLO"]
    assert quoted_text("a cake reading 'Happy Birthday' and “OPEN” and ‘to go’") == ["Happy Birthday", "OPEN", "to go"]
    assert quoted_text("the dog's sign says 'hi'") == ["hi"]
    assert quoted_text("no quotes at all") == []


def test_similarity_is_one_minus_normalised_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert normalise_text("  Happy \n Birthday ") == "happy birthday"
    assert text_similarity("HELLO", "hello") == 1.0
    assert text_similarity("HELLO", "HELP") == pytest.approx(1 - 2 / 5)
    assert text_similarity("abc", "") == 0.0


def test_rendered_text_scores_higher_for_its_own_prompt(ocr):
    image = rendered("HELLO")[None]
    assert ocr.read(image[0]).upper() == "HELLO"
    right = ocr.score(image, 'a sign that says "HELLO"')
    wrong = ocr.score(image, 'a sign that says "WORLD"')
    assert right.item() == pytest.approx(1.0) and wrong.item() < 0.5


def test_batch_with_per_image_prompts_and_blank_image(ocr):
    images = torch.stack([rendered("HELLO"), torch.ones(96, 256, 3)])
    scores = ocr.score(images, ['"hello"', '"hello"'])
    assert scores[0] == pytest.approx(1.0) and scores[1] == 0.0  # nothing recognised: distance = |target|


def test_prompt_without_quotes_is_a_clear_error(ocr):
    with pytest.raises(ValueError, match=r"prompts\[1\] has no quoted text"):
        ocr.score(torch.ones(2, 32, 32, 3), ['"A"', "a sign with no quotes"])
