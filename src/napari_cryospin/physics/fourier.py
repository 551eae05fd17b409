"""Centred Fourier and Hartley transforms and frequency grids (torch, any device).

Centred means the zero frequency sits at index ``L // 2``, matching the real-space centre convention;
the Hartley transform ``H = Re F − Im F`` is real, so volumes are stored as one real array.
"""

from __future__ import annotations

import torch


def fftn_centered(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Unnormalised centred FFT over the last ``ndim`` axes."""
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def ifftn_centered(f: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of :func:`fftn_centered` (complex result)."""
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(f, dim=dims), dim=dims), dim=dims)


def fourier_to_hartley(f: torch.Tensor) -> torch.Tensor:
    """Hartley coefficients of a real signal from its Fourier coefficients."""
    return f.real - f.imag


def hartley_centered(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Centred Hartley transform of a real array over the last ``ndim`` axes."""
    return fourier_to_hartley(fftn_centered(x, ndim))


def ihartley_centered(h: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse centred Hartley transform (the transform is its own inverse up to 1/N)."""
    n = 1
    for s in h.shape[-ndim:]:
        n *= s
    return hartley_centered(h, ndim) / n


def frequency_grid_2d(box: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(box, box, 2) integer frequencies (kx, ky) in cycles per box, centre at ``box // 2``."""
    k = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def disk_indices(box: int, radius: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Flat indices of the (box, box) centred grid with |k| ≤ radius (cycles per box)."""
    k = frequency_grid_2d(box, device).reshape(-1, 2)
    return torch.nonzero(k.norm(dim=-1) <= radius).squeeze(-1)


def radial_shells(box: int, ndim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer shell index round(|k|) of every point of a centred grid, for FSC and spectra."""
    k = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    grids = torch.meshgrid(*([k] * ndim), indexing="ij")
    r2 = sum(g * g for g in grids)
    return torch.round(torch.sqrt(r2)).long()
