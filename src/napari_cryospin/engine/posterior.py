"""Log posterior over view directions on a HEALPix grid (RING): a plain grid, and a refined one.

A view direction is column 2 of a rotation R (CONVENTIONS); in-plane rotation turns columns 0 and 1
about it. The caller scores rotations with a negative log-likelihood that closes over its volume, image,
CTF and shift, so this module knows nothing about the model.

At full resolution the likelihood is far sharper than any affordable uniform grid, so
:func:`refined_view_posterior` also samples in-plane angles aligned to known good poses (the anchors)
and fine HEALPix patches around them and around the grid's best views, and keeps each pixel's best
sample (a profile posterior: unlike a sum, it does not depend on how many samples a pixel got).
"""

from __future__ import annotations

from collections.abc import Callable

import healpy
import numpy as np
import torch

from .events import SkyPatch


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


def carry_to_views(rotations: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Rotations (A, V, 3, 3): each of `rotations` (A, 3, 3) turned along the great circle taking its view
    (column 2) onto each unit direction (V, 3), so its in-plane angle is kept as far as a sphere allows."""
    a = rotations[:, :, 2]
    d = directions / directions.norm(dim=-1, keepdim=True)
    v = torch.linalg.cross(a[:, None].expand(-1, len(d), -1), d[None].expand(len(a), -1, -1), dim=-1)
    c = (a[:, None] * d[None]).sum(-1)
    zero = torch.zeros_like(v[..., 0])
    k = torch.stack(
        [
            torch.stack([zero, -v[..., 2], v[..., 1]], -1),
            torch.stack([v[..., 2], zero, -v[..., 0]], -1),
            torch.stack([-v[..., 1], v[..., 0], zero], -1),
        ],
        -2,
    )
    eye = torch.eye(3, dtype=rotations.dtype).expand_as(k)
    turn = eye + k + k @ k / (1.0 + c).clamp_min(1e-9)[..., None, None]
    opposite = c < -1.0 + 1e-9  # half a turn about any axis perpendicular to the view
    if bool(opposite.any()):
        axis, _ = _perpendicular_basis(a)
        flip = 2.0 * axis[:, :, None] * axis[:, None, :] - torch.eye(3, dtype=rotations.dtype)
        turn = torch.where(opposite[..., None, None], flip[:, None].expand_as(turn), turn)
    return turn @ rotations[:, None]


def inplane_turns(rotations: torch.Tensor, angles_rad: torch.Tensor) -> torch.Tensor:
    """Rotations (..., K, 3, 3): each of `rotations` (..., 3, 3) turned about its column 2 by each angle."""
    cos, sin, zero, one = (
        torch.cos(angles_rad),
        torch.sin(angles_rad),
        torch.zeros_like(angles_rad),
        torch.ones_like(angles_rad),
    )
    rz = torch.stack(
        [
            torch.stack([cos, -sin, zero], -1),
            torch.stack([sin, cos, zero], -1),
            torch.stack([zero, zero, one], -1),
        ],
        -2,
    )
    return rotations[..., None, :, :] @ rz.to(rotations)


def _distinct(rotations: torch.Tensor, within_deg: float = 2.0) -> torch.Tensor:
    """`rotations` (A, 3, 3) less each one within `within_deg` of an earlier one: (K, 3, 3)."""
    kept: list[torch.Tensor] = []
    limit = 1.0 + 2.0 * np.cos(np.radians(within_deg))  # trace of RᵀR' above this: closer than the limit
    for rotation in rotations:
        if all(float(torch.trace(other.T @ rotation)) < limit for other in kept):
            kept.append(rotation)
    return torch.stack(kept)


def _best_per_pixel(nside: int, rotations: torch.Tensor, log_like: np.ndarray) -> np.ndarray:
    """The largest of `log_like` (N,) among the rotations (N, 3, 3) of each pixel (−inf where none)."""
    best = np.full(healpy.nside2npix(nside), -np.inf)
    np.maximum.at(best, view_pixels(rotations, nside), log_like)
    return best


def refined_view_posterior(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    anchors: np.ndarray | torch.Tensor,
    nside: int = 8,
    n_inplane: int = 12,
    fine_nside: int = 32,
    patch_deg: float = 5.0,
    carry_deg: float = 30.0,
    fine_inplane_deg: float = 6.0,
    fine_step_deg: float = 1.5,
    top_views: int = 3,
    temperature: float = 1.0,
    batch: int = 4096,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, SkyPatch]:
    """Normalised log posterior (12·nside²,) of the view and fine pixels (nside `fine_nside`) near its mode.

    Samples: the uniform grid (`n_inplane` angles per view); every anchor (A, 3, 3) (e.g. each head's
    candidate and the pose) as is and carried to every view within `carry_deg` of it; and, in a disc of
    `patch_deg` around each
    anchor's view and the grid's `top_views` best views, every fine pixel with in-plane angles within
    ±`fine_inplane_deg` (step `fine_step_deg`) of the best sample there. A pixel's value is its best
    sample's log-likelihood (`score_fn`: see :func:`view_log_posterior`); logsumexp over pixels is 0.
    """
    f64 = torch.float64

    def scored(rotations: torch.Tensor) -> np.ndarray:
        flat = rotations.reshape(-1, 3, 3).to(device=device, dtype=torch.float32)
        with torch.no_grad():
            nll = torch.cat([score_fn(flat[i : i + batch]).reshape(-1) for i in range(0, len(flat), batch)])
        return (-nll.to(f64).cpu() / temperature).numpy()

    views = torch.as_tensor(healpix_view_grid(nside), dtype=f64)
    anchors_t = _distinct(torch.as_tensor(np.asarray(anchors), dtype=f64).reshape(-1, 3, 3))
    samples = [rotations_for_views(views, n_inplane).reshape(-1, 3, 3), anchors_t]
    near = (anchors_t[:, :, 2] @ views.T) > np.cos(np.radians(carry_deg))  # (A, V)
    samples.append(carry_to_views(anchors_t, views)[near])
    rotations = torch.cat(samples)
    log_like = scored(rotations)

    coarse = _best_per_pixel(nside, rotations, log_like)
    order = np.argsort(-coarse)[:top_views]
    centres = np.concatenate([anchors_t[:, :, 2].numpy(), healpix_view_grid(nside)[order]])
    all_dirs = rotations[:, :, 2].numpy()
    fine_rotations = []
    angles = torch.arange(-fine_inplane_deg, fine_inplane_deg + 1e-9, fine_step_deg, dtype=f64).deg2rad()
    patch_pixels = set()
    for centre in centres:
        disc = healpy.query_disc(fine_nside, centre, np.radians(patch_deg), inclusive=True)
        new = np.setdiff1d(disc, np.fromiter(patch_pixels, np.int64, len(patch_pixels)))
        near = all_dirs @ centre > np.cos(np.radians(patch_deg + 1.0))
        if not len(new) or not near.any():
            continue
        patch_pixels.update(new.tolist())
        reference = rotations[np.flatnonzero(near)[np.argmax(log_like[near])]]
        targets = torch.as_tensor(np.stack(healpy.pix2vec(fine_nside, new), -1), dtype=f64)
        carried = carry_to_views(reference[None], targets)[0]
        fine_rotations.append(inplane_turns(carried, angles).reshape(-1, 3, 3))
    if fine_rotations:
        extra = torch.cat(fine_rotations)
        rotations = torch.cat([rotations, extra])
        log_like = np.concatenate([log_like, scored(extra)])
    coarse = _best_per_pixel(nside, rotations, log_like)
    norm = float(torch.logsumexp(torch.as_tensor(coarse), 0))
    fine = _best_per_pixel(fine_nside, rotations, log_like)
    pixels = np.sort(np.fromiter(patch_pixels, np.int64, len(patch_pixels)))
    best = int(np.argmax(log_like))
    patch = SkyPatch(
        nside=fine_nside,
        pixels=pixels,
        log_posterior=fine[pixels] - norm,
        mode=rotations[best, :, 2].numpy(),
    )
    return coarse - norm, patch
