"""Text helpers for the OCR reward: quoted targets in a prompt, and a normalised edit similarity."""

from __future__ import annotations

import re

# "double", “curly double”, ‘curly single’ and 'single' quotes; a straight single quote only counts when it is
# not inside a word, so apostrophes ("a dog's sign") are not taken for quotes.
_QUOTES = re.compile(r'"([^"]+)"|“([^”]+)”|‘([^’]+)’|(?<!\w)\'([^\']+)\'(?!\w)')


def quoted_text(prompt: str) -> list[str]:
    """The quoted passages of ``prompt``, in order: 'a sign that says "OPEN"' -> ['OPEN']."""
    return [next(group for group in match.groups() if group is not None) for match in _QUOTES.finditer(prompt)]


def normalise_text(text: str) -> str:
    """Case-folded, with every run of whitespace made one space and the ends stripped."""
    return " ".join(text.casefold().split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance: fewest single-character insertions, deletions and substitutions turning a into b."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def text_similarity(target: str, found: str) -> float:
    """1 - levenshtein(t, f) / max(|t|, |f|) on normalised strings, in [0, 1] (1 = identical)."""
    target, found = normalise_text(target), normalise_text(found)
    longest = max(len(target), len(found))
    return 1.0 if longest == 0 else 1.0 - levenshtein(target, found) / longest
