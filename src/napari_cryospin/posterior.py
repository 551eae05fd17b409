"""Approximate log posterior over view directions on a HEALPix grid (RING), marginalised over in-plane.

A view direction is column 2 of a rotation R (CONVENTIONS); in-plane rotation turns columns 0 and 1
about it. The caller scores rotations with a negative log-likelihood that closes over its volume, image,
CTF and shift, so this module knows nothing about the model.
"""

from __future__ import annotations

from collections.abc import Callable

import healpy
import numpy as np
import torch


def healpix_view_grid(nside: int) -> np.ndarray:
    """Unit vectors (12·nside², 3) of the HEALPix pixel centres in RING order."""
    return np.stack(healpy.pix2vec(nside, np.arange(healpy.nside2npix(nside))), axis=-1)


def _perpendicular_basis(directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors (e1, e2) with e1 × e2 = d for each unit direction d."""
    helper = torch.zeros_like(directions)
    near_z = directions[:, 2].abs() > 0.9
    helper[near_z, 0] = 1.0
    helper[~near_z, 2] = 1.0
    e1 = torch.linalg.cross(helper, directions, dim=-1)
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    return e1, torch.linalg.cross(directions, e1, dim=-1)


def rotations_for_views(directions: np.ndarray | torch.Tensor, n_inplane: int) -> torch.Tensor:
    """Rotations (V, n_inplane, 3, 3) whose column 2 is each direction, in-plane angles 2πk/n_inplane."""
    d = torch.as_tensor(np.asarray(directions), dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    e1, e2 = _perpendicular_basis(d)
    angles = torch.arange(n_inplane, dtype=torch.float64) * (2 * torch.pi / n_inplane)
    cos, sin = torch.cos(angles)[None, :, None], torch.sin(angles)[None, :, None]
    x_axis = cos * e1[:, None] + sin * e2[:, None]
    y_axis = -sin * e1[:, None] + cos * e2[:, None]
    z_axis = d[:, None].expand_as(x_axis)
    return torch.stack([x_axis, y_axis, z_axis], dim=-1)


def view_log_posterior(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    nside: int = 8,
    n_inplane: int = 24,
    temperature: float = 1.0,
    batch: int = 4096,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Normalised log posterior (12·nside²,) of the view direction under a flat prior.

    `score_fn(R)` maps float32 rotations (B, 3, 3) on `device` to negative log-likelihoods (B,);
    in-plane rotation is marginalised with logsumexp, and logsumexp over the pixels is 0.
    """
    rotations = rotations_for_views(healpix_view_grid(nside), n_inplane).reshape(-1, 3, 3)
    rotations = rotations.to(device=device, dtype=torch.float32)
    with torch.no_grad():
        chunks = [score_fn(rotations[i : i + batch]).reshape(-1) for i in range(0, len(rotations), batch)]
    nll = torch.cat(chunks)
    log_like = -nll.to(torch.float64).cpu() / temperature
    per_view = torch.logsumexp(log_like.reshape(-1, n_inplane), dim=1)
    return (per_view - torch.logsumexp(per_view, dim=0)).numpy()


def view_pixels(rotations: np.ndarray | torch.Tensor, nside: int) -> np.ndarray:
    """HEALPix (RING) pixel of each rotation's view direction (column 2), shape (M,)."""
    r = rotations.detach().cpu().numpy() if isinstance(rotations, torch.Tensor) else np.asarray(rotations)
    view = r.reshape(-1, 3, 3)[:, :, 2]
    return np.asarray(healpy.vec2pix(nside, view[:, 0], view[:, 1], view[:, 2]), dtype=np.int64)
