"""Global pose exploration: soft assignment over a rotation grid × shift grid, and its map update.

Every grid rotation is sliced once per batch; the error of every (image, shift, rotation) then costs two
matrix products (``‖C·m‖² − 2⟨C·m, o_s⟩ + ‖o‖²``). Each image keeps its ``top_k`` best (rotation, shift)
pairs, weighted by their Gaussian posterior; the map is the Wiener solution of the weighted insertions,
kept as a running (exponentially forgotten) sum so that it improves batch by batch, as in stochastic EM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.posterior import healpix_view_grid, rotations_for_views
from ..physics.fourier import fourier_to_hartley
from ..physics.reconstruction import Accumulator
from ..physics.shifts import centering_phase
from ..physics.slicing import insert_slices
from .likelihood import FrequencyDisk, ImageBatch
from .volume import HartleyVolume

MAX_TABLE = 1 << 24
"""Largest (image, shift, rotation) error table held at once (64 MiB of float32)."""


def so3_grid(nside: int, n_inplane: int) -> torch.Tensor:
    """Rotations (12·nside²·n_inplane, 3, 3): HEALPix view directions × evenly spaced in-plane angles."""
    return rotations_for_views(healpix_view_grid(nside), n_inplane).reshape(-1, 3, 3).float()


@dataclass
class SoftAssignment:
    """Each image's ``top_k`` best poses: rotations (B, K, 3, 3), shifts (B, K, 2), weights, errors (B, K)."""

    rotations: torch.Tensor
    shifts: torch.Tensor
    weights: torch.Tensor
    errors: torch.Tensor


@torch.no_grad()
def grid_search(
    volume: HartleyVolume,
    batch: ImageBatch,
    grid: torch.Tensor,
    centres: torch.Tensor,
    offsets: torch.Tensor,
    disk: FrequencyDisk,
    n_points: int,
    top_k: int,
    copy: int = 0,
    temperature: float = 1.0,
    shift_sigma: float | None = None,
) -> SoftAssignment:
    """Score every grid rotation at shifts ``centres + offsets`` for every image; keep the ``top_k`` best.

    Weights are the normalised Gaussian posterior ``exp(−n·(e − e_min) / (2σ²·T))`` with σ² the image's best
    mean squared residual (the noise estimate under the best pose) and T the ``temperature``. With
    ``shift_sigma`` (px) a Gaussian prior on the shift from the box centre, ``exp(−|s|²/(2·shift_sigma²))``,
    joins the posterior (as RELION's offset prior): the search can follow a particle far off-centre
    without every image being free to slide onto noise. Its σ² is the image's power per point (a noise
    estimate at low SNR). Returned errors include the prior's term.
    """
    k = disk.k[:n_points]
    b, g, s = len(batch.idx), len(grid), len(offsets)
    grid = grid.to(k.device)
    ctf = batch.ctf[:, :n_points]
    shifts = centres[:, None, :] + offsets[None]  # (B, S, 2)
    phase = centering_phase(k / disk.box, shifts.reshape(-1, 2)).reshape(b, s, -1)
    obs = fourier_to_hartley(batch.spectrum[:, None, :n_points] * phase)  # (B, S, P)
    weighted = obs * ctf[:, None, :]
    obs_norm = (obs[:, :1] ** 2).sum(-1, keepdim=True)  # (B, 1, 1): a unitary phase keeps the norm
    penalty: torch.Tensor | float = 0.0  # the prior's term (B, S, 1), in the errors' units
    if shift_sigma is not None:
        penalty = (obs_norm / n_points) * (shifts**2).sum(-1, keepdim=True) / (n_points * shift_sigma**2)
    # Rotations in chunks, so that the (B, S, chunk) error table stays near MAX_TABLE values.
    chunk = max(1, MAX_TABLE // max(1, b * s))
    table = volume.grid_slices(grid, k, copy)  # (G, P), kept while the map is unchanged
    errors = which = None
    for start in range(0, g, chunk):
        if table is None:
            slices = volume.slices(grid[start : start + chunk], k, copy)  # (G', P)
        else:
            slices = table[start : start + chunk]
        cross = weighted @ slices.T  # (B, S, G')
        model_norm = (ctf * ctf) @ (slices * slices).T  # (B, G')
        err = (model_norm[:, None, :] - 2 * cross + obs_norm) / n_points + penalty
        gc = len(slices)
        flat_idx = torch.arange(s, device=k.device)[:, None] * g + start + torch.arange(gc, device=k.device)
        err, flat_idx = err.reshape(b, -1), flat_idx.reshape(1, -1).expand(b, -1)
        if errors is not None:
            err, flat_idx = torch.cat([errors, err], 1), torch.cat([which, flat_idx], 1)
        neg, pick = torch.topk(-err, min(top_k, err.shape[1]), dim=1)
        errors, which = -neg, torch.gather(flat_idx, 1, pick)
    sigma2 = errors[:, :1].clamp_min(1e-12)
    weights = torch.softmax(-(errors - errors[:, :1]) * n_points / (2 * sigma2 * temperature), dim=1)
    rot = grid[which % g]
    shift = torch.gather(shifts, 1, (which // g)[..., None].expand(-1, -1, 2))
    return SoftAssignment(rot, shift, weights, errors)


@torch.no_grad()
def insert_weighted(
    batch: ImageBatch, assignment: SoftAssignment, disk: FrequencyDisk, n_points: int
) -> Accumulator:
    """Gridded ``Σ w·C·Y_centred`` and ``Σ w·C²`` of a batch at its soft poses (full disk, so no mirror)."""
    k = disk.k[:n_points]
    b, top = assignment.weights.shape
    ctf = batch.ctf[:, None, :n_points]
    phase = centering_phase(k / disk.box, assignment.shifts.reshape(-1, 2)).reshape(b, top, -1)
    w = assignment.weights[..., None]
    value = (w * ctf * batch.spectrum[:, None, :n_points] * phase).reshape(-1, n_points)
    weight = (w * ctf * ctf).expand(b, top, -1).reshape(-1, n_points)
    rot = assignment.rotations.reshape(-1, 3, 3)
    re, den = insert_slices(value.real.contiguous(), weight.contiguous(), rot, k, disk.box)
    im, _ = insert_slices(value.imag.contiguous(), weight.contiguous(), rot, k, disk.box)
    return Accumulator(torch.complex(re, im), den)


def forget(running: Accumulator | None, new: Accumulator, rate: float) -> Accumulator:
    """Running sums ``(1 − rate)·running + new`` (the first batch starts them).

    In a steady state they hold ``1/rate`` batches' worth of images, the scale a prior on the map needs.
    """
    if running is None:
        return new
    return Accumulator(running.num * (1 - rate) + new.num, running.den * (1 - rate) + new.den)
