"""The pieces of auto-decoding's global re-search: half maps re-solved from the current poses, and a wide
search (fine grid over a wide shift window, its best candidates refined) that a pose must beat.

At SNR 0.05 the particles a run gets wrong sit off in shift as well as in rotation (2.5 px median, 8 px at
the 90th percentile, on 1BD2), so a grid searched ±box/16 around their current shift misses their true
pose; a window of ±box/8 about the box centre (the largest shift the simulator and real picks give) finds
it. The best grid poses are 15° apart, too coarse to beat a refined pose at high radius: each of the top
few is refined in a ball at exploration's top radius, then the best in a finer ball at the current one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..geometry.rotations import axis_angle_to_matrix
from ..model.likelihood import searched_error, shift_grid
from ..model.search import SoftAssignment, grid_search, insert_weighted
from ..physics.reconstruction import Accumulator, solve_map

if TYPE_CHECKING:
    from ..data.particle_set import ImageBatch
    from . import distributed
    from .run_model import RunModel

TOP_K = 8
"""Fine-grid poses per particle that are refined (on 1BD2 at SNR 0.05 the truth is among the top 8 for
most of the particles a wrong basin holds)."""

COARSE_BALL_DEG, FINE_BALL_DEG = 8.0, 3.0
"""Radii of the two refinement balls: the first spans the grid's 15° spacing, the second its own."""

BALL_POINTS = 48
"""Random rotations in each ball (besides its centre)."""

LOCAL_WINDOW_PX = 1.5
"""Shift window (px) searched about each refined candidate's shift."""

WIDE_WINDOW_FRACTION = 1 / 8
"""The wide search's shift window about the box centre, as a fraction of the box (8 px at box 64)."""

FAR_DEG = 20.0
"""A move further than this is a change of basin (the wide search's balls span 8° + 3°)."""

BATCH = 64
"""Particles scored at once (TOP_K × BALL_POINTS candidates each)."""


def ball(deg: float, seed: int, device: torch.device | str, points: int = BALL_POINTS) -> torch.Tensor:
    """(points + 1, 3, 3): the identity and ``points`` rotations uniform in a ball of ``deg``."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(points, generator=g) ** (1 / 3) * np.deg2rad(deg)
    axis = torch.randn(points, 3, generator=g)
    turns = axis_angle_to_matrix(axis / axis.norm(dim=1, keepdim=True) * angle[:, None])
    return torch.cat([torch.eye(3)[None], turns]).to(device)


HELD_OUT = 8
"""Subsets of the particles (index modulo this) a round searches in turn, each against half maps solved
without it. A particle's own image in its half map favours the pose it was inserted at: on 1BD2 at SNR 0.05
the true pose beat the (wrong) current one for 3 % of the particles beyond 90° with it, for 34 % without;
the map loses an eighth of its particles, which changed no right particle's basin."""


def held_out_subset(idx: np.ndarray) -> np.ndarray:
    """The held-out subset (0 … HELD_OUT − 1) of particles ``idx`` (B,)."""
    return np.asarray(idx) % HELD_OUT


@dataclass
class PoseMaps:
    """Each half's gridded sums at the current poses, one per held-out subset: ``parts[copy][subset]``."""

    parts: list[list[Accumulator]]

    def install(self, model: RunModel, without: int | None = None) -> None:
        """Solve each half's map from its sums (all of them, or all but subset ``without``) into the model."""
        for c, parts in enumerate(self.parts):
            kept = [a for k, a in enumerate(parts) if k != without]
            acc = Accumulator(sum(a.num for a in kept), sum(a.den for a in kept))
            solved = solve_map(acc.symmetrized(model.symmetry), prior=model.prior)
            model.volume.set_from_real_space(torch.from_numpy(solved).to(model.device), copy=c)


@torch.no_grad()
def maps_from_poses(model: RunModel, dp: distributed.DataParallel) -> PoseMaps:
    """Backproject each half's particles at their current poses, per held-out subset; install the full maps.

    Adam's half maps trail the poses: on 1BD2 at SNR 0.05 they hold 18.3 / 18.8 Å against the truth
    where a backprojection of the same poses holds 14.6 / 15.0 Å, and the re-search is only as good as
    the map it searches against. The maps are in the decoder's units (normalised spectra, as
    exploration's running sums) and carry the run's prior.
    """
    block = dp.block(model.n)
    n_points = model.n_points()
    parts = [[_empty_sums(model) for _ in range(HELD_OUT)] for _ in range(model.volume.copies)]
    for k in range(HELD_OUT):
        part = block[held_out_subset(block) == k]
        for start in range(0, len(part), BATCH * 4):
            batch = model.batch(part[start : start + BATCH * 4])
            rot, shift = model.poses(batch.idx)
            for c, mask, sub in model.copy_parts(batch):
                b = len(sub.idx)
                at = SoftAssignment(
                    rot[mask][:, None], shift[mask][:, None], rot.new_ones(b, 1), rot.new_zeros(b, 1)
                )
                parts[c][k] = parts[c][k] + insert_weighted(sub, at, model.disk, n_points)
    maps = PoseMaps([[dp.sum_blocks(acc) for acc in copy] for copy in parts])
    maps.install(model)
    return maps


def _empty_sums(model: RunModel) -> Accumulator:
    """Zero sums on the D³ grid of :func:`insert_weighted` (a subset a process holds none of adds these)."""
    d, device = model.disk.box, model.device
    return Accumulator(
        torch.zeros((d, d, d), dtype=torch.complex64, device=device),
        torch.zeros((d, d, d), dtype=torch.float32, device=device),
    )


@torch.no_grad()
def wide_search(
    model: RunModel,
    batch: ImageBatch,
    rot: torch.Tensor,
    shift: torch.Tensor,
    coarse_points: int,
    n_points: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Against each particle's own half map: the error (B,) of its pose (rot (B, 3, 3), shift (B, 2) px)
    refined in the fine ball, and the wide search's best error (B,), rotation (B, 3, 3) and shift (B, 2).

    The grid and the coarse ball are scored with ``coarse_points`` frequencies (exploration's top radius,
    where a pose 8° off is still in its basin), the fine balls with ``n_points`` (the current radius).
    """
    device = rot.device
    coarse, fine = ball(COARSE_BALL_DEG, 2, device), ball(FINE_BALL_DEG, 4, device)
    local = shift_grid(LOCAL_WINDOW_PX, device=device)
    wide = shift_grid(model.box * WIDE_WINDOW_FRACTION, device=device)
    vol, disk = model.volume, model.disk

    def refine(sub, c, r, s, turns, points):  # best of r (b, C, 3, 3) · turns, shifts about s (b, C, 2)
        b = r.shape[0]
        cand = r[:, :, None] @ turns[None, None]  # (b, C, T, 3, 3), each T about one start shift
        err, best = searched_error(vol, sub, cand, s[:, :, None], local, disk, points, c)
        err, cand, best = err.reshape(b, -1), cand.reshape(b, -1, 3, 3), best.reshape(b, -1, 2)
        i, ar = err.argmin(1), torch.arange(b, device=device)
        return err[ar, i], cand[ar, i], best[ar, i]

    def search(sub: ImageBatch, c: int, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
        now, _, _ = refine(sub, c, rot[m][:, None], shift[m][:, None], fine, n_points)
        centre = torch.zeros(len(sub.idx), 2, device=device)
        found = grid_search(vol, sub, model.grids[-1], centre, wide, disk, coarse_points, TOP_K, copy=c)
        _, r, s = refine(sub, c, found.rotations, found.shifts, coarse, coarse_points)
        err, r, s = refine(sub, c, r[:, None], s[:, None], fine, n_points)
        return now, err, r, s

    now, err, best_rot, best_shift = model.by_copy(batch, search)
    return now, err, best_rot, best_shift
