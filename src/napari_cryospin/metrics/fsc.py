"""Fourier shell correlation and resolution at a threshold, in numpy (maps are small and on the CPU).

Shells are ``round(|k|)`` of the centred grid, 0 … D/2, as in :func:`physics.fourier.radial_shells`;
frequencies are reported in 1/Å from the voxel size.
"""

from __future__ import annotations

import numpy as np


def _shell_index(box: int) -> np.ndarray:
    k = np.arange(box) - box // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.round(np.sqrt(kz * kz + ky * ky + kx * kx)).astype(np.int64)


def _centred_fft(vol: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(vol)))


def fsc(vol_a: np.ndarray, vol_b: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """FSC of two (D, D, D) maps over shells 0 … D/2: (frequency in 1/Å, correlation per shell)."""
    a = np.asarray(vol_a, dtype=np.float64)
    b = np.asarray(vol_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"FSC needs two cubic maps of the same shape, got {a.shape} and {b.shape}")
    box = a.shape[0]
    fa, fb = _centred_fft(a), _centred_fft(b)
    shells = _shell_index(box).ravel()
    n = box // 2 + 1
    keep = shells < n
    shells = shells[keep]
    fa, fb = fa.ravel()[keep], fb.ravel()[keep]
    cross = np.bincount(shells, (fa * fb.conj()).real, minlength=n)
    pa = np.bincount(shells, np.abs(fa) ** 2, minlength=n)
    pb = np.bincount(shells, np.abs(fb) ** 2, minlength=n)
    denom = np.sqrt(pa * pb)
    values = np.divide(cross, denom, out=np.zeros(n), where=denom > 0)
    freq = np.arange(n) / (box * voxel_size)
    return freq, values


def resolution_at(freq: np.ndarray, fsc_values: np.ndarray, threshold: float) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold``, linearly interpolated.

    Shell 0 is skipped; a curve that never falls below the threshold gives Nyquist ``1 / freq[-1]``.
    """
    freq = np.asarray(freq, dtype=np.float64)
    values = np.asarray(fsc_values, dtype=np.float64)
    below = np.flatnonzero(values[1:] < threshold)
    if below.size == 0:
        return float(1.0 / freq[-1])
    i = int(below[0]) + 1
    f0, f1, v0, v1 = freq[i - 1], freq[i], values[i - 1], values[i]
    crossing = f1 if v0 == v1 else f0 + (v0 - threshold) * (f1 - f0) / (v0 - v1)
    return float(1.0 / crossing) if crossing > 0 else float("inf")


def soft_mask(box: int, radius: float, width: float) -> np.ndarray:
    """Spherical (D, D, D) mask: 1 inside ``radius`` voxels, raised-cosine fall to 0 over ``width``."""
    k = np.arange(box) - box // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kz * kz + ky * ky + kx * kx)
    if width <= 0:
        return (r <= radius).astype(np.float32)
    t = np.clip((r - radius) / width, 0.0, 1.0)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)
