"""The automatic soft mask of the particle, from the map itself (RELION's mask creation, chosen for you).

The full map is low-pass filtered to 15 Å (only the envelope matters, and noise is averaged away), then
thresholded at the higher of a fraction of its maximum and a multiple of its noise (the low-passed half
difference ``(A − B)/2``, which holds the full map's noise and none of its signal); specks smaller than a
tenth of the largest region are dropped; the rest is dilated and given a raised-cosine edge, so the mask
neither cuts into the particle nor adds sharp edges that correlate the halves by themselves.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .shells import cosine_lowpass

LOWPASS_A = 15.0
"""Resolution (Å) of the map the mask is drawn from."""
FRACTION_OF_MAX = 0.1
"""Threshold as a fraction of the low-passed map's maximum."""
NOISE_SIGMAS = 5.0
"""…or this many standard deviations of the low-passed noise, whichever is higher."""
KEEP_FRACTION = 0.1
"""Connected regions smaller than this fraction of the largest are dropped."""
DILATE_A = 3.0
"""The thresholded region is grown by this many Å (at least ``DILATE_PX`` voxels)…"""
SOFT_EDGE_A = 6.0
"""…then falls to 0 over this many Å (at least ``SOFT_EDGE_PX`` voxels) as a raised cosine."""
DILATE_PX = 3
SOFT_EDGE_PX = 6
"""RELION's automatic mask in voxels (extension 3, soft edge 6): at coarse sampling (5 Å/px) 6 Å is one
voxel, an edge sharp enough that the mask alone correlates the halves at every frequency."""


def auto_mask(
    full: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, voxel: float
) -> tuple[np.ndarray, dict]:
    """A soft mask (D, D, D) float32 in 0 … 1 around the particle in ``full``, and how it was made (a plain
    dict for metrics.json: threshold, its two candidates and the share of the box inside)."""
    lowpass = max(LOWPASS_A, 2.5 * voxel)
    smooth = cosine_lowpass(full, voxel, lowpass)
    noise = cosine_lowpass(0.5 * (half_a - half_b), voxel, lowpass)
    by_max, by_noise = FRACTION_OF_MAX * float(smooth.max()), NOISE_SIGMAS * float(noise.std())
    threshold = max(by_max, by_noise)
    labels, count = ndimage.label(smooth > threshold)
    if count == 0:
        return np.ones_like(full, dtype=np.float32), {"threshold": threshold, "empty": True}
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= KEEP_FRACTION * sizes.max()))
    outside = ndimage.distance_transform_edt(~keep) * voxel  # Å from the kept region
    dilate, edge = max(DILATE_A, DILATE_PX * voxel), max(SOFT_EDGE_A, SOFT_EDGE_PX * voxel)
    t = np.clip((outside - dilate) / edge, 0.0, 1.0)
    mask = (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)
    info = {
        "lowpass_A": lowpass,
        "threshold": threshold,
        "threshold_by_max": by_max,
        "threshold_by_noise": by_noise,
        "dilate_A": dilate,
        "soft_edge_A": edge,
        "fraction_of_box": float(mask.mean()),
    }
    return mask, info
