"""Local resolution: the FSC 0.143 of the two half maps within a soft spherical window moved over a coarse
grid of centres inside the mask, interpolated to a map (Å per voxel; blocres' and RELION's idea).

The window is a small cube (about 8 × the global resolution across, 16 … 48 voxels), so each FSC is
cheap; the centres are spaced so that at most about 1500 of them fall in the mask at any box.
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage

from .shells import half_space_weights, rfft_radius

WINDOW_PER_RESOLUTION = 8.0
"""Window width in units of the global resolution…"""
WINDOW_VOXELS = (16, 48)
"""…within these bounds (voxels, even)."""
MAX_CENTRES = 1500
"""The grid's stride grows until at most about this many centres fall inside the mask."""
BATCH = 128
"""Windows transformed at once."""


def _window_size(box: int, voxel: float, resolution: float) -> int:
    w = int(np.ceil(WINDOW_PER_RESOLUTION * resolution / voxel / 2)) * 2
    return int(min(max(w, WINDOW_VOXELS[0]), WINDOW_VOXELS[1], max(box // 2, WINDOW_VOXELS[0])))


def _window(w: int) -> np.ndarray:
    """Soft sphere in a (w, w, w) cube: 1 to 0.3·w, raised cosine to 0 at 0.5·w."""
    k = np.arange(w) - w // 2
    r = np.sqrt(sum(g * g for g in np.meshgrid(k, k, k, indexing="ij", sparse=True)))
    t = np.clip((r - 0.3 * w) / (0.2 * w), 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


def _stride(inside: np.ndarray) -> int:
    stride = 2
    while inside[::stride, ::stride, ::stride].sum() > MAX_CENTRES:
        stride += 1
    return stride


def local_resolution(
    half_a: np.ndarray, half_b: np.ndarray, mask: np.ndarray, voxel: float, resolution: float
) -> tuple[np.ndarray, dict]:
    """Local resolution map (D, D, D float32, Å) of two half maps (D, D, D) inside ``mask`` (values
    0 … 1, centres where > 0.5); ``resolution`` (Å) is the global one and sets the window. Voxels away from
    every centre take the nearest centre's value. Returns the map and a dict (window, stride, centres,
    median)."""
    box = half_a.shape[0]
    w = _window_size(box, voxel, resolution)
    inside = mask > 0.5
    stride = _stride(inside)
    grid = np.arange(0, box, stride)
    centres = np.argwhere(inside[np.ix_(grid, grid, grid)])
    window = _window(w)
    pad = w // 2
    a = np.pad(half_a.astype(np.float32), pad)
    b = np.pad(half_b.astype(np.float32), pad)
    shell = np.round(rfft_radius((w, w, w))).astype(np.int64).ravel()
    weight = np.broadcast_to(half_space_weights((w, w, w)), (w, w, w // 2 + 1)).ravel()
    keep = shell <= w // 2
    shell, weight = shell[keep], weight[keep]
    n_shells = w // 2 + 1
    values = np.empty(len(centres))
    for start in range(0, len(centres), BATCH):
        chunk = centres[start : start + BATCH] * stride  # voxel index = corner of the window in the padding
        wa = np.stack([a[z : z + w, y : y + w, x : x + w] for z, y, x in chunk]) * window
        wb = np.stack([b[z : z + w, y : y + w, x : x + w] for z, y, x in chunk]) * window
        fa = fft.rfftn(wa, axes=(1, 2, 3)).reshape(len(chunk), -1)[:, keep]
        fb = fft.rfftn(wb, axes=(1, 2, 3)).reshape(len(chunk), -1)[:, keep]
        for i in range(len(chunk)):
            cross = np.bincount(shell, weight * (fa[i] * fb[i].conj()).real, minlength=n_shells)
            pa = np.bincount(shell, weight * np.abs(fa[i]) ** 2, minlength=n_shells)
            pb = np.bincount(shell, weight * np.abs(fb[i]) ** 2, minlength=n_shells)
            curve = cross / np.maximum(np.sqrt(pa * pb), 1e-30)
            below = np.flatnonzero(curve[1:] < 0.143)
            r = float(below[0]) + 1 if below.size else float(n_shells - 1)
            if below.size and below[0] > 0:  # interpolate between the last shell above and the first below
                v0, v1 = curve[int(r) - 1], curve[int(r)]
                r = r - 1 + (v0 - 0.143) / (v0 - v1)
            values[start + i] = w * voxel / max(r, 1e-6)
    if not len(centres):
        return np.full(half_a.shape, resolution, np.float32), {"window_voxels": w, "centres": 0}
    coarse = np.full((len(grid),) * 3, np.nan)
    coarse[tuple(centres.T)] = values
    nearest = ndimage.distance_transform_edt(np.isnan(coarse), return_distances=False, return_indices=True)
    coarse = coarse[tuple(nearest)]
    coords = np.arange(box) / stride
    zz, yy, xx = np.meshgrid(coords, coords, coords, indexing="ij")
    full = ndimage.map_coordinates(coarse, [zz, yy, xx], order=1, mode="nearest").astype(np.float32)
    info = {
        "window_voxels": w,
        "stride": stride,
        "centres": len(centres),
        "median_A": float(np.median(values)),
        "range_A": [float(values.min()), float(values.max())],
    }
    return full, info
