"""Fourier shells in numpy's ``rfftn`` layout, and per-shell filters of real (D, D, D) maps.

Radii are in cycles per box (|k| of the centred grid); shell i holds ``round(|k|) = i``, as in
``metrics/fsc.py``, so a curve indexed by shell 0 … D/2 applies to a map directly. Transforms are
scipy's, in the maps' own precision (float32 maps: half the time and memory of numpy's float64).
"""

from __future__ import annotations

import numpy as np
from scipy import fft


def rfft_radius(shape: tuple[int, ...]) -> np.ndarray:
    """|k| in cycles per box (float64) of every coefficient of ``np.fft.rfftn`` of a map of ``shape``."""
    axes = [np.fft.fftfreq(n) * n for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1]) * shape[-1]]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.sqrt(sum(g * g for g in grids))


def apply_per_shell(vol: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``vol`` (D, D, D) with each Fourier shell i (round |k|) multiplied by ``weights[i]``; shells beyond
    the curve (the corners past D/2) get 0."""
    spectrum = fft.rfftn(vol)
    shell = np.round(rfft_radius(vol.shape)).astype(np.int64)
    table = np.zeros(int(shell.max()) + 1)
    table[: min(len(weights), len(table))] = weights[: len(table)]
    return fft.irfftn(spectrum * table[shell], s=vol.shape).astype(np.float32)


def cosine_lowpass(vol: np.ndarray, voxel: float, resolution: float, width_shells: float = 2.0) -> np.ndarray:
    """``vol`` low-pass filtered at ``resolution`` Å: 1 below, a raised cosine over ``width_shells`` shells
    centred on it, 0 above (a soft edge rings less than a sharp one)."""
    box = vol.shape[0]
    r_cut = box * voxel / resolution
    r = rfft_radius(vol.shape)
    t = np.clip((r - r_cut) / width_shells + 0.5, 0.0, 1.0)
    return fft.irfftn(fft.rfftn(vol) * 0.5 * (1 + np.cos(np.pi * t)), s=vol.shape).astype(np.float32)


def shell_mean_amplitude(vol: np.ndarray) -> np.ndarray:
    """Mean Fourier amplitude |F| per shell 0 … D/2 of ``vol`` (D, D, D)."""
    box = vol.shape[0]
    amp = np.abs(fft.rfftn(vol)).ravel()
    shell = np.round(rfft_radius(vol.shape)).astype(np.int64).ravel()
    keep = shell <= box // 2
    total = np.bincount(shell[keep], amp[keep], minlength=box // 2 + 1)
    count = np.bincount(shell[keep], minlength=box // 2 + 1)
    return np.divide(total, count, out=np.zeros(box // 2 + 1), where=count > 0)


def half_space_weights(shape: tuple[int, ...]) -> np.ndarray:
    """How many coefficients of the full spectrum each ``rfftn`` coefficient stands for (1 or 2)."""
    n = shape[-1]
    weight = np.full(n // 2 + 1, 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    return weight


def shell_fsc(vol_a: np.ndarray, vol_b: np.ndarray) -> np.ndarray:
    """FSC per shell 0 … D/2 of two (D, D, D) maps; equal to ``metrics.fsc.fsc``'s from half the spectrum."""
    box = vol_a.shape[0]
    fa, fb = fft.rfftn(vol_a), fft.rfftn(vol_b)
    shell = np.round(rfft_radius(vol_a.shape)).astype(np.int64)
    weight = np.broadcast_to(half_space_weights(vol_a.shape), shell.shape)
    keep = shell <= box // 2
    shell, weight, fa, fb = shell[keep], weight[keep], fa[keep], fb[keep]
    n = box // 2 + 1
    cross = np.bincount(shell, weight * (fa * fb.conj()).real, minlength=n)
    pa = np.bincount(shell, weight * np.abs(fa) ** 2, minlength=n)
    pb = np.bincount(shell, weight * np.abs(fb) ** 2, minlength=n)
    denom = np.sqrt(pa * pb)
    return np.divide(cross, denom, out=np.zeros(n), where=denom > 0)
