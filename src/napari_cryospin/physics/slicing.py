"""Central slices of a 3D Fourier/Hartley grid (Fourier slice theorem) and their insertion.

A slice at rotation R samples the volume spectrum at ``R · (kx, ky, 0)`` by trilinear interpolation,
batched over any leading shape of rotations and differentiable with respect to the volume and R.
Volumes are ``[z, y, x]`` with the zero frequency at index ``D // 2``; frequencies are in cycles per box.
"""

from __future__ import annotations

import torch


def rotate_frequencies(rotations: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """3D points ``R · (kx, ky, 0)`` (..., P, 3) for rotations (..., 3, 3) and k2 (P, 2).

    One matrix product over all rotations (a view, transposed), not one small product per rotation:
    3 × faster for the fine grid's 4608 rotations.
    """
    lead = rotations.shape[:-2]
    q = rotations[..., :, :2].reshape(-1, 2) @ k2.T  # (N·3, P)
    return q.reshape(*lead, 3, k2.shape[0]).transpose(-1, -2)


def extract_slices(volume: torch.Tensor, rotations: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """Trilinear samples (..., P) of a real or complex (D, D, D) grid on the slices of ``rotations``.

    Points outside the grid read as zero.
    """
    d = volume.shape[-1]
    lead = rotations.shape[:-2]
    # grid_sample wants (x, y, z) in [-1, 1] with align_corners=True: index i ↦ 2i/(D−1) − 1, so the
    # point R·k at index R·k + D//2 is at R·(k·s) + (D//2)·s − 1, s = 2/(D−1): one product and a shift.
    scale = 2.0 / (d - 1)
    grid = rotate_frequencies(rotations, k2 * scale) + ((d // 2) * scale - 1.0)
    grid = grid.reshape(1, 1, 1, -1, 3)
    vol = torch.stack([volume.real, volume.imag])[None] if volume.is_complex() else volume[None, None]
    out = torch.nn.functional.grid_sample(
        vol.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )[0, :, 0, 0]
    out = torch.complex(out[0], out[1]) if volume.is_complex() else out[0]
    return out.reshape(*lead, k2.shape[0])


def insert_slices(
    values: torch.Tensor, weights: torch.Tensor, rotations: torch.Tensor, k2: torch.Tensor, box: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear gridding: add slice ``values`` (n, P) and ``weights`` (n, P) into (D, D, D) grids.

    Returns (value sum, weight sum); the adjoint of :func:`extract_slices`, used for backprojection.
    Both go in as two channels of one ``index_add_`` per corner; points outside land in a spare row.
    """
    d = box
    q = rotate_frequencies(rotations, k2).reshape(-1, 3) + d // 2
    pair = torch.stack([values.reshape(-1), weights.reshape(-1).to(values.dtype)], dim=-1)
    base = torch.floor(q)
    frac = (q - base).to(values.dtype)
    base = base.long()
    out = torch.zeros(d * d * d + 1, 2, dtype=values.dtype, device=values.device)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                ix, iy, iz = base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz
                w = (
                    (frac[:, 0] if dx else 1 - frac[:, 0])
                    * (frac[:, 1] if dy else 1 - frac[:, 1])
                    * (frac[:, 2] if dz else 1 - frac[:, 2])
                )
                ok = (ix >= 0) & (ix < d) & (iy >= 0) & (iy < d) & (iz >= 0) & (iz < d)
                flat = torch.where(ok, (iz * d + iy) * d + ix, d * d * d)
                out.index_add_(0, flat, pair * w[:, None])
    grid = out[:-1].reshape(d, d, d, 2)
    return grid[..., 0], grid[..., 1]
