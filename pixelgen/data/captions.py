"""The caption-prefix augmentation of the text-to-image pretraining data."""

from __future__ import annotations

import random

__all__ = ["CAPTION_PREFIXES", "CaptionPrefixAugment"]

# Verbatim, including "A image of ": the released text-to-image model was pretrained with these strings.
CAPTION_PREFIXES = (
    "A photo of ",
    "A picture of ",
    "A visual representation of ",
    "A image of ",
    "A scene of ",
    "A view of ",
    "A depiction of ",
)


class CaptionPrefixAugment:
    """With probability ``p``, prepend one of ``prefixes`` (uniformly) to a caption of fewer than
    ``max_words`` words (whitespace-separated); longer captions are never changed.

    Randomness comes from the ``random.Random`` passed in, so the augmentation is reproducible.
    """

    def __init__(self, p: float = 0.5, max_words: int = 30, prefixes: tuple[str, ...] = CAPTION_PREFIXES) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"The prefix probability p must lie in [0, 1], got {p}.")
        if max_words < 1:
            raise ValueError(f"max_words must be at least 1, got {max_words}.")
        if not prefixes:
            raise ValueError("CaptionPrefixAugment needs at least one prefix.")
        self.p = float(p)
        self.max_words = int(max_words)
        self.prefixes = tuple(prefixes)

    def __call__(self, caption: str, rng: random.Random) -> str:
        if len(caption.split()) >= self.max_words or rng.random() >= self.p:
            return caption
        return rng.choice(self.prefixes) + caption
