"""A simple input-quality check: does this picture look like a radiograph at all?

Radiographs are grey. A photo (a wound, a phone picture of a screen with a colour cast, a
document scan with coloured print) is still scored, but the image row carries a warning so a
reader knows the score means little. The rule is deliberately simple and errs towards silence:
a radiograph with a small coloured annotation or a faint tint is not flagged.
"""

from __future__ import annotations

import numpy as np

NOT_A_RADIOGRAPH = "does not look like a radiograph"
CHROMA_COLOURED = 0.15  # max(R,G,B) − min(R,G,B) above this counts as a coloured pixel
COLOURED_FRACTION = 0.10  # flag when at least this share of the pixels is coloured
BLANK_RANGE = 2 / 255  # flag when the whole image spans less than this (one flat value)


def colour_fraction(rgb: np.ndarray) -> float:
    """Share of pixels of an (h, w, 3) float image in [0, 1] that are clearly coloured."""
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float((chroma > CHROMA_COLOURED).mean())


def assess(grey: np.ndarray, rgb: np.ndarray | None = None) -> str | None:
    """A warning for the image row, or None when the image could be a radiograph."""
    if rgb is not None and rgb.size:
        share = colour_fraction(rgb)
        if share >= COLOURED_FRACTION:
            return (
                f"{NOT_A_RADIOGRAPH}: strongly coloured content ({share:.0%} of pixels "
                "coloured; radiographs are grey)"
            )
    if grey.size and float(grey.max()) - float(grey.min()) < BLANK_RANGE:
        return f"{NOT_A_RADIOGRAPH}: the image is blank (a single flat value)"
    return None
