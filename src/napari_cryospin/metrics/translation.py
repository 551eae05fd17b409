"""Translation between two maps to a fraction of a voxel, and moving a map by one.

Whole-voxel registration leaves up to half a voxel per axis between two maps; averaged or compared
(half maps, a map against the truth), that offset costs resolution near Nyquist that the poses did not
lose. The refinement maximises the exact cross-correlation as a function of a continuous translation.
"""

from __future__ import annotations

import numpy as np


def _wavevectors(shape: tuple[int, int, int]) -> np.ndarray:
    """Angular wavevectors (3, D, D, D) in (x, y, z) order for unshifted FFTs of a ``V[z, y, x]`` map."""
    kz, ky, kx = np.meshgrid(*(2 * np.pi * np.fft.fftfreq(n) for n in shape), indexing="ij")
    return np.stack([kx, ky, kz])


def whole_voxel_translation(vol: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The integer translation t (x, y, z voxels) with ``vol(q − t)`` closest to ``ref`` (by correlation)."""
    xc = np.fft.ifftn(np.fft.fftn(ref) * np.fft.fftn(vol).conj()).real
    shift = np.array(np.unravel_index(int(np.argmax(xc)), xc.shape))
    box = np.array(xc.shape)
    shift = np.where(shift > box // 2, shift - box, shift)
    return shift[::-1].astype(np.float64)


def refine_translation(
    vol: np.ndarray, ref: np.ndarray, start: np.ndarray, iterations: int = 20, reach: float = 1.0
) -> np.ndarray:
    """Sub-voxel translation t (x, y, z voxels) maximising ``Σ ref(q)·vol(q − t)``, by Newton steps from
    ``start`` (a whole-voxel estimate); steps stay within ``reach`` voxels of it."""
    k = _wavevectors(vol.shape)
    cross = np.fft.fftn(np.asarray(ref, np.float64)) * np.fft.fftn(np.asarray(vol, np.float64)).conj()
    start = np.asarray(start, np.float64)
    t = start.copy()
    for _ in range(iterations):
        phase = cross * np.exp(1j * np.tensordot(t, k, axes=1))
        grad = np.array([np.sum((1j * k[a] * phase).real) for a in range(3)])
        hess = np.array([[-np.sum((k[a] * k[b] * phase).real) for b in range(3)] for a in range(3)])
        if np.all(np.linalg.eigvalsh(hess) < 0):
            step = -np.linalg.solve(hess, grad)
        else:  # not yet in the peak's concave region: a small uphill step
            step = 0.1 * grad / max(np.linalg.norm(grad), 1e-30)
        t = start + np.clip(t + step - start, -reach, reach)
        if np.linalg.norm(step) < 1e-4:
            break
    return t


def best_translation(vol: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Translation t (x, y, z voxels, sub-voxel) with ``vol(q − t)`` closest to ``ref``."""
    return refine_translation(vol, ref, whole_voxel_translation(vol, ref))


def translate(vol: np.ndarray, t_xyz: np.ndarray) -> np.ndarray:
    """``vol(q − t)`` for a translation t (x, y, z voxels), by a Fourier phase (periodic boundary)."""
    k = _wavevectors(vol.shape)
    f = np.fft.fftn(np.asarray(vol, np.float64)) * np.exp(-1j * np.tensordot(np.asarray(t_xyz), k, axes=1))
    return np.fft.ifftn(f).real.astype(np.float32)
