"""Known-pose reconstruction: CTF-weighted direct Fourier inversion with a Wiener term.

Each image's centred spectrum ``C·Y·e^{−2πik·s}`` is gridded trilinearly at ``R·k`` together with
``C²``; the map is ``Σ C·Y / (Σ C² + λ)``, inverse-transformed, divided by the sinc² of the
trilinear kernel and softly masked to the reconstruction sphere. With the CTF of ``physics/ctf.py``
(``H(0) = −w``) this gives positive protein density.
Images are read from the (memory-mapped) stack in batches, so the stack is never loaded whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..geometry.symmetry import symmetrize_grid
from .ctf import ctf_2d
from .fourier import disk_indices, fftn_centered, frequency_grid_2d, ifftn_centered, radial_shells
from .shifts import centering_phase
from .slicing import insert_slices

DEFAULT_WIENER = 0.3
"""λ relative to the mean CTF² weight per voxel of each shell (see :func:`solve_map`)."""
_MASK_INNER = 0.425


@dataclass
class Accumulator:
    """Gridded sums of one particle set: ``num = Σ C·Y`` (complex) and ``den = Σ C²`` on the D³ grid."""

    num: torch.Tensor
    den: torch.Tensor

    def __add__(self, other: Accumulator) -> Accumulator:
        return Accumulator(self.num + other.num, self.den + other.den)

    def __sub__(self, other: Accumulator) -> Accumulator:
        """The sums without ``other``'s images (a subset of these)."""
        return Accumulator(self.num - other.num, self.den - other.den)

    def symmetrized(self, operators: np.ndarray | None) -> Accumulator:
        """The sums as if every image were also inserted at its mates' poses ``g·R`` (n operators (n, 3, 3),
        ``geometry/symmetry.py``): ``Σ_g num(g·k)``, ``Σ_g den(g·k)`` — RELION's symmetrised backprojector.
        None or the identity alone leaves them unchanged."""
        if operators is None or len(operators) < 2:
            return self
        n = len(operators)
        return Accumulator(symmetrize_grid(self.num, operators) * n, symmetrize_grid(self.den, operators) * n)


def ctf_tensors(ctf: Any, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """CTF parameters of particles ``idx`` as float32 tensors, keyed as :func:`physics.ctf.ctf_2d` wants."""
    names = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast")
    out = {
        n: torch.as_tensor(np.asarray(getattr(ctf, n))[idx], dtype=torch.float32, device=device)
        for n in names
    }
    for opt in ("phase_shift", "bfactor"):
        value = getattr(ctf, opt, None)
        if value is not None:
            out[opt] = torch.as_tensor(np.asarray(value)[idx], dtype=torch.float32, device=device)
    return out


def accumulate(
    particles: Any,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    operators: np.ndarray | None = None,
) -> Accumulator:
    """Grid ``Σ C·Y`` and ``Σ C²`` of the chosen particles (all when ``indices`` is None) at their poses.

    Only half of each image's spectrum is inserted; the other half follows from Friedel symmetry. With
    ``operators`` (a point group, n × 3 × 3) every image counts at its n mates' poses too.

    ``particles`` needs ``stack[idx] -> (k, L, L)``, ``ctf`` (per-particle arrays as in ``CTFParams``)
    and ``pixel_size``; ``rotations`` (n, 3, 3) and ``shifts_px`` (n, 2) follow the conventions.
    """
    device = torch.device(device)
    n = len(particles.stack)
    rotations = np.asarray(rotations)
    shifts_px = np.asarray(shifts_px)
    if rotations.shape != (n, 3, 3) or shifts_px.shape != (n, 2):
        raise ValueError(
            f"poses do not match the {n} particles: rotations {rotations.shape}, shifts {shifts_px.shape}"
        )
    if particles.ctf is None:
        raise ValueError("the particles have no CTF parameters; backprojection needs a STAR or .cs file")
    idx_all = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    box = int(particles.stack.box)
    apix = float(particles.pixel_size)
    k = frequency_grid_2d(box, device).reshape(-1, 2)
    disk = disk_indices(box, box / 2, device)
    half = (k[disk, 1] > 0) | ((k[disk, 1] == 0) & (k[disk, 0] >= 0))
    disk = disk[half]
    kd = k[disk]
    num = torch.zeros((box, box, box), dtype=torch.complex64, device=device)
    den = torch.zeros((box, box, box), dtype=torch.float32, device=device)
    for start in range(0, len(idx_all), batch_size):
        idx = np.sort(idx_all[start : start + batch_size])
        images = torch.as_tensor(particles.stack[idx], device=device)
        spectra = fftn_centered(images, 2).reshape(len(idx), -1)[:, disk]
        ctf = ctf_2d(kd / (box * apix), **ctf_tensors(particles.ctf, idx, device))
        shift = torch.as_tensor(shifts_px[idx], dtype=torch.float32, device=device)
        centred = spectra * centering_phase(kd / box, shift)
        rot = torch.as_tensor(rotations[idx], dtype=torch.float32, device=device)
        weighted = centred * ctf
        # Real and imaginary parts go in as the value/weight pair of one call: the complex
        # index_add_ behind a complex call is several times slower on the CPU.
        re, im = insert_slices(weighted.real, weighted.imag, rot, kd, box)
        num += torch.complex(re, im)
        den += insert_slices(ctf * ctf, ctf * ctf, rot, kd, box)[0]
    return Accumulator(num + _mirror(num).conj(), den + _mirror(den)).symmetrized(operators)


def _mirror(grid: torch.Tensor) -> torch.Tensor:
    """``grid[−k]`` on the centred grid (zero where −k falls outside, the −D/2 planes)."""
    out = torch.roll(torch.flip(grid, (0, 1, 2)), (1, 1, 1), (0, 1, 2))
    out[0], out[:, 0], out[:, :, 0] = 0, 0, 0
    return out


def _gridding_correction(box: int, device: torch.device) -> torch.Tensor:
    """sinc² of the trilinear kernel along each axis, times a soft mask of the reconstruction sphere.

    Dividing by sinc² alone would amplify the noise 15-fold in the corners, where no particle is;
    the mask (1 inside 0.425·D, raised-cosine to 0 at D/2) keeps the correction where density can be.
    """
    k = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    s = torch.sinc(k / box) ** 2
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    r = torch.sqrt(kz * kz + ky * ky + kx * kx)
    t = ((r - _MASK_INNER * box) / ((0.5 - _MASK_INNER) * box)).clamp(0, 1)
    mask = 0.5 * (1 + torch.cos(torch.pi * t))
    return mask / (s[:, None, None] * s[None, :, None] * s[None, None, :])


def solve_map(
    acc: Accumulator, wiener: float = DEFAULT_WIENER, prior: torch.Tensor | None = None
) -> np.ndarray:
    """Real-space (D, D, D) map from gridded sums: ``Σ C·Y / (Σ C² + λ)``, inverse FFT, gridding correction.

    The map is masked softly to the reconstruction sphere (see :func:`_gridding_correction`).

    ``λ`` is ``wiener`` times the mean of ``Σ C²`` over the voxels of each shell, so the term damps
    voxels that are sampled less than their neighbours at the same resolution, at any particle count
    or image scale; beyond Nyquist (the corners) the map is set to zero. ``prior`` (S,) per integer
    shell replaces it with an absolute term, noise/τ² (``model/prior.py``): the posterior-mean map.
    """
    box = acc.den.shape[-1]
    device = acc.den.device
    shells = radial_shells(box, 3, device)
    nshell = box // 2 + 1
    inside = shells < nshell
    flat = torch.where(inside, shells, torch.zeros_like(shells)).reshape(-1)
    total = torch.zeros(nshell, device=device).index_add_(0, flat, acc.den.reshape(-1))
    count = torch.zeros(nshell, device=device).index_add_(0, flat, torch.ones_like(acc.den).reshape(-1))
    lam = wiener * total / count.clamp_min(1) if prior is None else prior.to(device)[:nshell]
    spectrum = acc.num / (acc.den + lam[flat].reshape(acc.den.shape)).clamp_min(1e-20)
    spectrum = torch.where(inside, spectrum, torch.zeros_like(spectrum))
    vol = ifftn_centered(spectrum, 3).real * _gridding_correction(box, device)
    return vol.cpu().numpy().astype(np.float32)


def backproject(
    particles: Any,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    *,
    wiener: float = DEFAULT_WIENER,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    operators: np.ndarray | None = None,
) -> np.ndarray:
    """(D, D, D) map of ``particles`` at known poses (see module doc); positive protein density
    (symmetrised over the point group ``operators`` when given)."""
    acc = accumulate(particles, rotations, shifts_px, indices, batch_size, device, operators)
    return solve_map(acc, wiener)


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, sorted random halves of ``range(n)`` (seeded), for gold-standard half maps."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def half_maps(
    particles: Any,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    *,
    wiener: float = DEFAULT_WIENER,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    operators: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(full, half_a, half_b) maps from one pass over the stack; the halves come from :func:`split_halves`
    (each symmetrised on its own over ``operators`` when given: the halves stay independent)."""
    idx_a, idx_b = split_halves(len(particles.stack), seed)
    acc_a = accumulate(particles, rotations, shifts_px, idx_a, batch_size, device, operators)
    acc_b = accumulate(particles, rotations, shifts_px, idx_b, batch_size, device, operators)
    return solve_map(acc_a + acc_b, wiener), solve_map(acc_a, wiener), solve_map(acc_b, wiener)
