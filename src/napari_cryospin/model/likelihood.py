"""The image likelihood of Eq. 3 on a disk of frequencies, in Hartley space.

Instead of shifting every model slice, the observed spectrum is re-centred with the candidate shift
(the phase is unitary, so the squared error is the same) and compared with ``CTF · slice`` as Hartley
coefficients: one real slice per candidate pose, differentiable in volume, rotation and shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.particle_set import CTFParams
from ..physics.ctf import ctf_2d
from ..physics.fourier import fftn_centered, fourier_to_hartley, frequency_grid_2d
from ..physics.shifts import centering_phase
from .volume import HartleyVolume


class FrequencyDisk:
    """The frequencies (cycles per box) inside radius ``box/2 − 1``, sorted by radius.

    Sorting lets a low-pass mask of any radius be the first ``count(radius)`` points.
    """

    def __init__(self, box: int, pixel_size: float, device: torch.device):
        k = frequency_grid_2d(box, device).reshape(-1, 2)
        r = k.norm(dim=-1)
        order = torch.argsort(r, stable=True)
        keep = order[r[order] <= box / 2 - 1]
        self.box, self.pixel_size = box, pixel_size
        self.flat = keep
        self.k = k[keep]
        self.radius = r[keep]

    def count(self, radius: float) -> int:
        """Number of points with |k| ≤ radius (cycles per box)."""
        return int(
            torch.searchsorted(self.radius, torch.tensor(radius, device=self.radius.device), right=True)
        )


@dataclass
class ImageBatch:
    """A batch of particles prepared for the likelihood: spectra and CTFs on the frequency disk."""

    idx: torch.Tensor  # (B,) particle indices
    images: torch.Tensor  # (B, L, L) normalised real-space images (the encoder's input)
    spectrum: torch.Tensor  # (B, P) complex, orthonormal spectrum of the image
    ctf: torch.Tensor  # (B, P)
    whiten: torch.Tensor | None = None  # (B, P) 1/σ of the noise model, already in spectrum and ctf

    def select(self, mask: torch.Tensor) -> ImageBatch:
        """The sub-batch of the particles where ``mask`` (B,) is true."""
        whiten = None if self.whiten is None else self.whiten[mask]
        return ImageBatch(self.idx[mask], self.images[mask], self.spectrum[mask], self.ctf[mask], whiten)


def prepare_batch(
    idx: torch.Tensor,
    images: torch.Tensor,
    ctf: CTFParams,
    disk: FrequencyDisk,
    whiten: torch.Tensor | None = None,
) -> ImageBatch:
    """FFT the (normalised) images and evaluate their CTFs on the disk.

    ``whiten`` (B, P), the noise model's 1/σ per point (``model/noise.py``), multiplies both spectrum and
    CTF, so every residual ``CTF·slice − spectrum`` downstream is whitened, and the exploration's map sums
    become the noise-weighted ``Σ C·Y/σ²``, ``Σ C²/σ²``.
    """
    box = images.shape[-1]
    spec = fftn_centered(images, 2).reshape(images.shape[0], -1)[:, disk.flat] / box
    sel = idx.cpu().numpy()
    dev = images.device

    def col(a):
        return torch.as_tensor(a[sel], dtype=torch.float32, device=dev)

    values = ctf_2d(
        disk.k / (box * disk.pixel_size),
        col(ctf.defocus_u),
        col(ctf.defocus_v),
        col(ctf.defocus_angle),
        col(ctf.voltage),
        col(ctf.cs),
        col(ctf.amplitude_contrast),
        col(ctf.phase_shift),
        col(ctf.bfactor),
    )
    if whiten is not None:
        spec, values = spec * whiten, values * whiten
    return ImageBatch(idx=idx, images=images, spectrum=spec, ctf=values, whiten=whiten)


def squared_error(
    volume: HartleyVolume,
    batch: ImageBatch,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    disk: FrequencyDisk,
    n_points: int,
    copy: int = 0,
    detach_volume: bool = False,
) -> torch.Tensor:
    """Mean squared Hartley residual (B, ...) for candidate poses (B, ..., 3, 3) and shifts (B, ..., 2).

    ``detach_volume`` lets the gradient reach the poses only: a pose step then skips the map's
    full-grid gradient, a cost that does not shrink with the batch.
    """
    k = disk.k[:n_points]
    b = rotations.shape[0]
    extra = rotations.shape[1:-2]
    ones = [1] * len(extra)
    model = volume.slices(rotations, k, copy, detach_volume) * batch.ctf[:, :n_points].reshape(b, *ones, -1)
    phase = centering_phase(k / disk.box, shifts.reshape(-1, 2)).reshape(b, *extra, -1)
    obs = fourier_to_hartley(batch.spectrum[:, :n_points].reshape(b, *ones, -1) * phase)
    return ((model - obs) ** 2).mean(-1)


def shift_grid(radius: float, step: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """In-plane offsets (S, 2) in pixels on a square grid inside a disk of ``radius`` (always holds 0)."""
    n = int(radius // step)
    a = torch.arange(-n, n + 1, device=device, dtype=torch.float32) * step
    yy, xx = torch.meshgrid(a, a, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    return grid[grid.norm(dim=-1) <= radius + 1e-6]


def searched_error(
    volume: HartleyVolume,
    batch: ImageBatch,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    offsets: torch.Tensor,
    disk: FrequencyDisk,
    n_points: int,
    copy: int = 0,
    detach_volume: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`squared_error`, minimised over ``shifts + offsets`` for every candidate pose.

    The model slice does not depend on the shift, so all offsets cost two matrix products:
    ``‖m − o_s‖² = ‖m‖² − 2⟨m, o_s⟩ + ‖o‖²``. ``shifts`` (B, ..., 2) may broadcast against the
    rotations' (B, ...) (candidates about one start shift share its phases). Returns the best errors
    (B, ...) and shifts (B, ..., 2); ``detach_volume`` lets the gradient reach the poses only.
    """
    k = disk.k[:n_points]
    b = rotations.shape[0]
    ones = [1] * (rotations.dim() - 3)
    model = volume.slices(rotations, k, copy, detach_volume) * batch.ctf[:, :n_points].reshape(b, *ones, -1)
    phase = centering_phase(k / disk.box, shifts.reshape(-1, 2)).reshape(*shifts.shape[:-1], -1)
    g = batch.spectrum[:, :n_points].reshape(b, *ones, -1) * phase
    off = centering_phase(k / disk.box, offsets)  # (S, P)
    c_minus_s = (off.real - off.imag).T
    c_plus_s = (off.real + off.imag).T
    cross = (model * g.real) @ c_minus_s - (model * g.imag) @ c_plus_s  # (B, ..., S)
    obs_norm = (fourier_to_hartley(g) ** 2).sum(-1, keepdim=True)
    err = ((model**2).sum(-1, keepdim=True) - 2 * cross + obs_norm) / n_points
    best, which = err.min(-1)
    return best, shifts + offsets[which]
