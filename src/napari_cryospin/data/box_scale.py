"""The one rescale of pixel size and shifts when images are served at another box (same field of view)."""

from __future__ import annotations

import numpy as np


def rescale(
    pixel_size: float, shifts: np.ndarray | None, box: int, new_box: int
) -> tuple[float, np.ndarray | None]:
    """Pixel size (Å) and shifts (px) of ``box``-pixel images resampled to ``new_box`` pixels.

    Fourier cropping (or padding) keeps the field of view: pixels grow by ``box / new_box`` and a shift
    in pixels shrinks by it. ``shifts`` None stays None.
    """
    scale = box / new_box
    return pixel_size * scale, None if shifts is None else shifts / scale
