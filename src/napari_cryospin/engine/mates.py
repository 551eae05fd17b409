"""A pose's mates: the 2-fold turns an image of a small elongated particle barely tells apart at low SNR,
and (in the final check) the best distant pose of a global search.

The mates of a pose R are the in-plane 180° turn ``R·Rz(π)``, the view from the other side with the
image flipped, ``R·Rx(π)`` and ``R·Ry(π)``, and the 2-folds about the half map's own principal (inertia)
axes, ``S·R`` (``S = 2·e·eᵀ − I``; a near 2-fold of the map leaves its projection almost unchanged, and
for an elongated map two of them reverse its long axis). Each hypothesis (the pose and every mate) gets
the same small local search — its rotation turned by ±``LOCAL_DEG`` about x, y and z, and the 1-px shift
search — against a half map as the pose steps see it (masked, FSC-filtered), so the pose and its mates
are compared on equal terms: the global re-search uses the particle's own half (gold standard), the final
check the other half (held out). The final check also scores the best fine-grid pose at least DISTANT_DEG
from the pose: a particle left on a wrong pose at low SNR is often not on an exact 2-fold of it. The
margin is the log-likelihood (nats) of the pose over its best mate, in the units of
``particle_scores.pose_confidence``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..geometry.rotations import axis_angle_to_matrix, geodesic_distance
from ..model.likelihood import ImageBatch, searched_error
from ..model.search import grid_search
from .events import Stage
from .run_results import MATE_COLUMN, MATE_MARGIN_COLUMN
from .validity import half_map_mask

if TYPE_CHECKING:
    from .run_model import RunModel

TWOFOLD_NAMES = ("in-plane 180°", "flip about x", "flip about y", "map axis 1", "map axis 2", "map axis 3")
"""The 2-fold mates in the order of :func:`mate_rotations`; map axes from the largest spread to the
smallest."""
MATE_NAMES = (*TWOFOLD_NAMES, "a distant pose")
"""What the final check scores the pose against: the 2-fold mates, then the best distant grid pose."""
DISTANT_DEG = 90.0
"""The distant pose is the best fine-grid pose at least this far from the pose. Measured at SNR 0.05 (an
84 kDa elongated particle, a run that ended with 20 % of its particles > 90° off, few of them on an exact
2-fold): scored on the other half, it fits as well (≤ 1 nat) for 67 % of the wrong particles and 7 % of
the right ones; the six 2-folds alone, 11 % of the wrong ones."""
DISTANT_TOP_K = 32
"""Grid poses kept per image, among which the best distant one is taken."""
LOCAL_DEG = 3.0
"""Each hypothesis is also scored turned by ± this about x, y and z: a mate's best pose is near, not at,
the exact 2-fold of a refined pose (the fine grid's spacing is 15°, the refined poses' error ~2–3°)."""
AS_GOOD_NATS = 1.0
"""A mate fits as well as the pose when the pose's margin over it is at most this (nats): a likelihood
ratio below e (posterior odds under 73:27) is, on Jeffreys' scale, not worth more than a bare mention."""
SYMMETRY_DEG = 10.0
"""A mate within this of the pose turned by an operator of the map's detected group is a symmetry mate:
it projects as the pose does, blurs nothing, and is not counted (the view 2-folds match one only for views
near a 2-fold axis; the ±LOCAL_DEG searches and the axes' error fit well inside it)."""
SYMMETRY_BASIN_DEG = 30.0
"""A distant grid pose within this of a symmetry mate is that mate: twice the fine grid's spacing, the
basin in which the best of the top grid poses lands near a pose. Measured on a C1 run of a T cage (every
particle within 10° of its pose modulo T): the distant poses that fit as well lay a median 20.6° from a T
mate, so at 18° (SYMMETRY_DEG plus half the spacing) 13 % of the particles were counted as on a distant
pose."""
WARN_FRACTION = 0.10
"""The verdict warns (and the map is not called reliable) when more particles than this fit a mate as well."""


def view_twofolds() -> torch.Tensor:
    """(3, 3, 3) the 2-folds about the image's z, x and y axes, applied on the right (``R·Q``)."""
    return torch.tensor(
        [
            [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
            [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]],
            [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]],
        ]
    )


def principal_twofolds(volume: np.ndarray) -> np.ndarray:
    """(3, 3, 3) 2-folds ``S = 2·e·eᵀ − I`` about the principal axes e of a (D, D, D) map ``V[z, y, x]``
    (its positive density under the half maps' mask), in (x, y, z) coordinates; largest spread first."""
    box = volume.shape[0]
    weight = np.clip(volume, 0.0, None) * half_map_mask(box)
    if weight.sum() <= 0:
        weight = np.abs(volume)
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], 1).astype(np.float64)
    w = weight.ravel().astype(np.float64) / weight.sum()
    centred = points - w @ points
    spread = (centred * w[:, None]).T @ centred
    _, axes = np.linalg.eigh(spread)  # ascending spread
    axes = axes[:, ::-1].T
    return 2.0 * axes[:, :, None] * axes[:, None, :] - np.eye(3)


def _local_turns(device: torch.device) -> torch.Tensor:
    """(7, 3, 3): the identity and ± LOCAL_DEG about x, y and z (applied on the left)."""
    w = torch.zeros(7, 3)
    for i in range(3):
        w[1 + 2 * i, i], w[2 + 2 * i, i] = np.deg2rad(LOCAL_DEG), -np.deg2rad(LOCAL_DEG)
    return axis_angle_to_matrix(w).to(device)


def mate_rotations(rot: torch.Tensor, map_twofolds: torch.Tensor) -> torch.Tensor:
    """(B, 6, 3, 3): the mates of poses ``rot`` (B, 3, 3), in the order of MATE_NAMES (``map_twofolds``
    (3, 3, 3) from :func:`principal_twofolds` of the particles' own half map)."""
    view = rot[:, None] @ view_twofolds().to(rot)[None]
    own = map_twofolds.to(rot)[None] @ rot[:, None]
    return torch.cat([view, own], 1)


def map_twofolds(model: RunModel) -> list[torch.Tensor]:
    """Each map copy's :func:`principal_twofolds` (3, 3, 3), from its map as it is now."""
    return [
        torch.from_numpy(principal_twofolds(model.volume.real_space(c).cpu().numpy())).float()
        for c in range(model.volume.copies)
    ]


def score_hypotheses(
    model: RunModel,
    batch: ImageBatch,
    rot: torch.Tensor,
    shift: torch.Tensor,
    n_points: int,
    twofolds: list[torch.Tensor],
    held_out: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pose and its mates after the local search, each against the particle's own half map (the
    other half's with ``held_out``): errors (B, 7), rotations (B, 7, 3, 3) and shifts (B, 7, 2) px;
    column 0 is the pose, then MATE_NAMES. ``twofolds``: :func:`map_twofolds`. Call it inside
    ``model.volume.frozen(...)`` to score against the pose steps' reference (masked, FSC-filtered)."""
    turns = _local_turns(rot.device)

    def score(sub: ImageBatch, c: int, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c = 1 - c if held_out else c
        hyp = torch.cat([rot[m][:, None], mate_rotations(rot[m], twofolds[c])], 1)  # (b, H, 3, 3)
        b, h = hyp.shape[:2]
        cand = turns[None, None] @ hyp[:, :, None]  # (b, H, 7, 3, 3), all about the pose's shift
        start = shift[m][:, None, None]  # (b, 1, 1, 2)
        err, best = searched_error(model.volume, sub, cand, start, model.offsets, model.disk, n_points, c)
        err, which = err.reshape(b, h, -1).min(-1)
        pick = which[:, :, None, None]
        rots = torch.gather(cand, 2, pick[..., None].expand(b, h, 1, 3, 3))[:, :, 0]
        shifts = torch.gather(best.reshape(b, h, -1, 2), 2, pick.expand(b, h, 1, 2))[:, :, 0]
        return err, rots, shifts

    err, rots, shifts = model.by_copy(batch, score)
    return err, rots, shifts


def turned_by_operator(turn: torch.Tensor, operators: np.ndarray, within_deg: float) -> torch.Tensor:
    """(…) bool: whether each rotation ``turn`` (…, 3, 3) is within ``within_deg`` of one of the symmetry
    ``operators`` (G, 3, 3) (False for all when there is none)."""
    ops = torch.as_tensor(np.asarray(operators).reshape(-1, 3, 3), dtype=turn.dtype, device=turn.device)
    if len(ops) == 0:
        return torch.zeros(turn.shape[:-2], dtype=torch.bool, device=turn.device)
    cos = (torch.einsum("...ij,gij->...g", turn, ops) - 1) / 2  # cos of the angle from each operator
    return (cos >= np.cos(np.deg2rad(within_deg))).any(-1)


def symmetry_mates(rots: torch.Tensor, operators: np.ndarray) -> torch.Tensor:
    """(B, 6) bool from :func:`score_hypotheses`' rotations (B, 7, 3, 3): the mates that are the pose
    turned by one of the map's symmetry ``operators`` (G, 3, 3), within SYMMETRY_DEG (poses R and g·R of
    a map with V(g·p) = V(p) project alike)."""
    turn = rots[:, 1:] @ rots[:, :1].transpose(-1, -2)  # (B, 6, 3, 3): mate = turn · pose
    return turned_by_operator(turn, operators, SYMMETRY_DEG)


def distant_pose_errors(
    model: RunModel,
    batch: ImageBatch,
    rot: torch.Tensor,
    shift: torch.Tensor,
    n_points: int,
    operators: np.ndarray,
    held_out: bool = False,
) -> torch.Tensor:
    """(B,) the error of the best fine-grid pose at least DISTANT_DEG from each pose ``rot`` (B, 3, 3) and
    not the pose turned by one of the map's symmetry ``operators`` (G, 3, 3); +inf where none is among the
    DISTANT_TOP_K best. Against the particle's own half map (the other half's with ``held_out``); the
    shift search is centred on ``shift`` (B, 2) px."""

    def search(sub: ImageBatch, c: int, m: torch.Tensor) -> torch.Tensor:
        c = 1 - c if held_out else c
        grid, offsets, disk = model.grids[-1], model.offsets, model.disk
        found = grid_search(model.volume, sub, grid, shift[m], offsets, disk, n_points, DISTANT_TOP_K, copy=c)
        turn = found.rotations @ rot[m][:, None].transpose(-1, -2)  # (b, K, 3, 3): candidate = turn · pose
        keep = torch.rad2deg(geodesic_distance(found.rotations, rot[m][:, None])) >= DISTANT_DEG
        keep &= ~turned_by_operator(turn, operators, SYMMETRY_BASIN_DEG)
        return torch.where(keep, found.errors, torch.full_like(found.errors, float("inf"))).min(1).values

    return model.by_copy(batch, search)[0]


def margins(errors: torch.Tensor, n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From :func:`score_hypotheses`' errors (B, 7): the pose's margin over its best mate in nats (B,)
    (Gaussian likelihood with the pose's residual as noise variance; +inf when every mate is left out
    with an infinite error) and that mate's index (B,)."""
    best, which = errors[:, 1:].min(1)
    sigma2 = errors[:, 0].clamp_min(1e-12)
    return (best - errors[:, 0]) * n_points / (2.0 * sigma2), which


@dataclass
class MateCheck:
    """Per particle: the pose's margin (nats) over its best mate and which mate (index into MATE_NAMES)."""

    margin: np.ndarray  # (n,) nats; NaN where every mate is a symmetry mate
    mate: np.ndarray  # (n,) int
    group: str = "C1"  # the detected point group whose mates are not counted
    symmetry_share: float = 0.0  # the share of the mate tests left out as symmetry mates
    counted: np.ndarray | None = None  # (n,) bool: the particles the shares count (None: all)
    operators: np.ndarray | None = None  # (G, 3, 3) the detected group's other than the identity
    checked_again: int = 0  # particles whose margin is the final search's (:meth:`after_search`)

    def after_search(self, searched: np.ndarray, margin: np.ndarray, moved: np.ndarray) -> MateCheck:
        """The check with the margins (n,) nats that the search of the particles in doubt measured for the
        poses it left (``doubtful_poses.search_batch``: over its best distant pose) where ``searched`` (n,)
        bool: the run's verdict and poses.star then judge the poses the run writes. A searched particle
        the search left on its basin (``moved`` (n,) bool false) keeps the lower of the two margins: the
        search chose its pose with the same image, so its margin alone is biased upward (at SNR 0.05 it
        counted 12.6 % of a pseudo-symmetric run's particles, 29.4 % of them > 90° off; the lower, 43 %)."""
        new_margin, mate = self.margin.copy(), self.mate.copy()
        first_lower = ~np.isnan(self.margin) & (np.isnan(margin) | (self.margin < margin))
        taken = searched & ~(~moved & first_lower)  # elsewhere the first check's margin stands, and its mate
        new_margin[taken] = margin[taken]
        mate[taken] = MATE_NAMES.index("a distant pose")
        return replace(self, margin=new_margin, mate=mate, checked_again=int(searched.sum()))

    @property
    def as_good(self) -> np.ndarray:
        """(n,) bool: the best mate fits as well as the pose (margin ≤ AS_GOOD_NATS)."""
        return self.margin <= AS_GOOD_NATS

    def _counted(self, values: np.ndarray) -> np.ndarray:
        """``values`` (n,) of the particles the shares count."""
        return values if self.counted is None else values[self.counted]

    def share(self) -> float:
        """The share of the counted particles that a mate fits as well.

        The run counts the particles the junk score keeps: an image of junk has no pose to be right about,
        and fits a distant pose as well as any (on a realistic set at SNR 0.1 with 12 % junk, 11.5 % of all
        particles fit a mate as well, 3.2 % of the true particles).
        """
        as_good = self._counted(self.as_good)
        return float(as_good.mean()) if as_good.size else 0.0

    def summary(self) -> dict:
        """metrics.json's ``final.mates``: the share of the counted particles a mate fits as well, and by
        which mate."""
        as_good, finite = self._counted(self.as_good), np.isfinite(self.margin)
        mate = self._counted(self.mate)
        return {
            "fraction_as_good": self.share(),
            "particles_counted": len(as_good),
            "threshold_nats": AS_GOOD_NATS,
            "median_margin_nats": float(np.nanmedian(self.margin)) if finite.any() else None,
            "symmetry_group": self.group,
            "symmetry_mates_left_out": self.symmetry_share,
            "checked_after_search": self.checked_again,
            "per_mate": {
                name: float((as_good & (mate == i)).mean()) if as_good.size else 0.0
                for i, name in enumerate(MATE_NAMES)
            },
        }

    def reason(self) -> str | None:
        """The verdict's warning when more than WARN_FRACTION of the counted particles fit a mate as well."""
        fraction = self.share()
        if fraction <= WARN_FRACTION:
            return None
        which = "particles" if self.counted is None else "particles not scored as junk"
        return (
            f"{100 * fraction:.0f} % of the {which} fit a flipped or distant pose as well: "
            "the map is blurred by mixed orientations"
        )

    def columns(self) -> dict[str, np.ndarray]:
        """poses.star columns: the margin and the best mate (1-based, as the napari table shows it)."""
        return {MATE_MARGIN_COLUMN: self.margin, MATE_COLUMN: self.mate.astype(np.int64) + 1}


@torch.no_grad()
def check_batch(
    model: RunModel,
    batch: ImageBatch,
    pose: tuple[torch.Tensor, torch.Tensor],
    n_points: int,
    twofolds: list[torch.Tensor],
    operators: np.ndarray,
    held_out: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of :func:`check_mates` at poses (rotations (B, 3, 3), shifts (B, 2) px): each particle's
    margin (B,) in nats, its best mate's index in MATE_NAMES (B,) and which 2-fold mates are symmetry
    mates (B, 6). Call it inside ``model.volume.frozen(...)``, one block for all batches."""
    rot, shift = pose
    err, rots, _ = score_hypotheses(model, batch, rot, shift, n_points, twofolds, held_out)
    same = symmetry_mates(rots, operators)
    err[:, 1:][same] = float("inf")
    far = distant_pose_errors(model, batch, rot, shift, n_points, operators, held_out)
    margin, which = margins(torch.cat([err, far[:, None]], 1), n_points)
    return margin, which, same


@torch.no_grad()
def check_mates(
    model: RunModel,
    symmetry: tuple[str, np.ndarray] = ("C1", np.zeros((0, 3, 3))),
    counted: np.ndarray | None = None,
    batch_size: int = 256,
) -> MateCheck:
    """Score every particle's final pose against its mates and its best distant pose (MATE_NAMES) at the
    run's last radius, on the other half's map once the halves share a frame (as the junk score): a
    particle's own half has fit its noise at its pose, right or wrong (on a run left at chance, 61 % of
    the particles > 90° off, the own half gave every pose a median 8–9 nats over its mates and flagged
    1.3 %). ``symmetry``: the map's detected group and its operators (:meth:`SymmetryReport.operators`);
    its mates are not counted. ``counted`` (n,) bool: the particles the shares count (the run: those the
    junk score keeps; None: all)."""
    group, operators = symmetry
    rot, shift = model.current_poses()
    twofolds = map_twofolds(model)
    held_out = model.volume.copies == 2 and model.halves_aligned
    stage = Stage.DECODING if model.stage == Stage.DONE else model.stage
    n_points = model.schedule.points(model.disk, stage, min(model.epoch, model.schedule.epochs - 1))
    out = torch.zeros(model.n, 3, dtype=torch.float64)  # (margin, mate, symmetry mates); each its block
    block = model.dp.block(model.n)
    with model.volume.frozen(model.reference_weight, model.reference_mask):
        for start in range(0, len(block), batch_size):
            idx = block[start : start + batch_size]
            batch = model.batch(idx)
            pose_rot = torch.from_numpy(rot[idx]).to(model.device)
            pose_shift = torch.from_numpy(shift[idx]).to(model.device)
            margin, which, same = check_batch(
                model, batch, (pose_rot, pose_shift), n_points, twofolds, operators, held_out
            )
            out[idx, 0] = margin.cpu().double()
            out[idx, 1] = which.cpu().double()
            out[idx, 2] = same.sum(1).cpu().double()
    model.dp.sync_blocks([out], model.n)
    margin = out[:, 0].numpy().copy()
    margin[~np.isfinite(margin)] = np.nan
    share = float(out[:, 2].sum()) / (model.n * len(TWOFOLD_NAMES))
    return MateCheck(margin, out[:, 1].numpy().astype(np.int64), group, share, counted, operators)
