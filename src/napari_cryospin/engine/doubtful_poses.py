"""A dense global search of the particles whose pose is in doubt, after the local refinement.

At low SNR exploration leaves some particles on a wrong basin (most often the flipped mate of an
elongated particle); local rounds cannot leave it, and the wide re-search (a 15° grid scored at
exploration's top radius, the best of eight chosen there) finds few of them. Against the refined half
maps at the halves' resolution the right pose wins for most of them (at least 72.9 % of the particles > 90°
off on a realistic 4JSV set at SNR 0.05), so the search is denser and scored at the current radius: random
rotations × the wide search's shift window about the box centre, the best ``TOP_K`` refined in two balls,
each particle against its own half's map without its held-out subset. A particle moves when what was
found beats its own pose refined in the same last ball. Only particles in doubt are searched: the mate
check's margin (the pose's log-likelihood over its best mate or distant pose) ranks the particles on a
wrong basin first (ROC AUC 0.975 and 0.927 on 4JSV and 1BD2 at SNR 0.05); those under ``MARGIN_NATS``, at
most the lowest ``SHARE`` of each half. The search runs ``PASSES`` times, the maps made again from the
poses of the pass before. Its last pass also checks the pose it leaves: the margin (nats) of that pose over
the best distant pose of the same search, so the run's mate check sees the poses it writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..geometry.rotations import geodesic_distance, random_rotations
from ..model.likelihood import FrequencyDisk, shift_grid
from ..physics.shifts import centering_phase
from ..physics.slicing import extract_slices
from .local_refine import (
    REACH,
    HalfReferences,
    best_local_poses,
    image_batch,
    load_rounds,
    noise_sigma,
    references,
    save_rounds,
    start_key,
)
from .mates import DISTANT_DEG, SYMMETRY_BASIN_DEG, turned_by_operator
from .research import FAR_DEG, HELD_OUT, WIDE_WINDOW_FRACTION, ball, held_out_subset

if TYPE_CHECKING:
    from ..data.particle_set import ParticleSet

log = logging.getLogger(__name__)

MARGIN_NATS = 10.0
"""Particles whose mate margin is below this are in doubt. On SNR 0.05 sets it holds 94 % (4JSV) and 100 %
(1BD2) of the particles > 90° off; on SNR 0.1 sets ≤ 0.2 % of the particles (ribosome70s: none)."""

SHARE = 0.5
"""At most this share of the particles is searched, the lowest margins first: it bounds the cost where
the SNR leaves most margins small (1BD2 at SNR 0.05: 58 % under ``MARGIN_NATS``; its lowest quarter holds
78 % of the particles > 90° off, its lowest half 98 %, and searching the half left 6.8 % of them > 90°
where the quarter left 7.4 %)."""

ROTATIONS = 10_000
"""Random rotations searched (a spacing of ~11°: the first ball spans it)."""

PASSES = 2
"""Searches of the same particles, the maps made again from the poses of the pass before: on 1BD2 at SNR
0.05 a second pass against the cleaner maps brought 5.7 % of the particles > 90° off to 5.3 %."""

TOP_K = 8
"""Best grid poses refined per particle."""

BALLS = ((6.0, 48), (3.0, 32))
"""(radius in degrees, rotations) of the two refinement balls, each with a ±0.5 px window."""

SCORES = 2**26
"""Scores held at once (rotations × particles × shifts, float32: 256 MB), which sets how many particles
are scored together."""

SLICES = 4096
"""Rotations sliced at once."""

SAVED = "doubtful_poses.npz"
"""The run folder's record of a finished search, for ``--resume``."""


def in_doubt(margin: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Sorted indices among ``members`` whose ``margin`` (n,) nats is under MARGIN_NATS, at most SHARE of
    the members, the lowest first; a NaN margin (every mate a symmetry mate) is not in doubt."""
    m = np.nan_to_num(margin[members], nan=np.inf)
    order = np.argsort(m, kind="stable")[: int(SHARE * len(members))]
    return np.sort(members[order[m[order] < MARGIN_NATS]])


def _grid_scores(
    table: torch.Tensor,
    power: torch.Tensor,
    spectrum: torch.Tensor,
    ctf: torch.Tensor,
    k: torch.Tensor,
    box: int,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's best score over ``offsets`` (S, 2) for every slice of ``table`` (G, P) (``power``: its
    square): (G, B) scores and the offset index; images ``spectrum`` (B, P) already at their shifts, ``ctf``
    (B, P). The score is ``best_local_poses``', one matrix product for the batch (the CTF folded into the
    image)."""
    off = centering_phase(k / box, offsets)  # (S, P)
    hartley = ctf[:, None] * (
        spectrum.real[:, None] * (off.real - off.imag)[None]
        - spectrum.imag[:, None] * (off.real + off.imag)[None]
    )  # (B, S, P): CTF · Hartley(image · offset)
    cross = (table @ hartley.reshape(-1, table.shape[1]).T).reshape(len(table), len(spectrum), len(offsets))
    norm = (power @ (ctf * ctf).T).sqrt().clamp_min(1e-20)  # (G, B)
    best, which = cross.max(2)
    return best / norm, which


@dataclass
class Searched:
    """The search's poses, rotations (n, 3, 3) and shifts (n, 2, px of the working box), its report, which
    particles it searched (n,) bool, the margin (n,) nats of each searched particle's pose over its best
    distant pose (NaN where not searched, or where every distant pose is a symmetry mate), and which
    particles it moved to another basin (n,) bool."""

    rotations: np.ndarray
    shifts: np.ndarray
    report: dict
    searched: np.ndarray
    margin: np.ndarray
    moved: np.ndarray


def _refined(
    scored: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int],
    pose: tuple[torch.Tensor, torch.Tensor],
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Poses (rotations (B, 3, 3), shifts (B, 2) px) refined in the BALLS one after the other: (rotations,
    shifts, scores). ``scored``: the Hartley grid, the images' spectra and CTFs (B, P), the frequencies
    (P, 2) and the box, as :func:`best_local_poses` takes them."""
    rot, shift = pose
    device = scored[0].device
    fine = shift_grid(0.5, 0.25, device)
    for i, (deg, points) in enumerate(BALLS):
        rot, shift, score = best_local_poses(*scored, rot, shift, ball(deg, seed + i, device, points), fine)
    return rot, shift, score


def _best_distant(
    scores: torch.Tensor, rotations: torch.Tensor, pose: torch.Tensor, mates_of: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the best grid rotation (index into ``rotations`` (G, 3, 3), by ``scores`` (G, B)) at least
    ``mates.DISTANT_DEG`` from its ``pose`` (B, 3, 3) and not the pose turned by one of the symmetry
    operators ``mates_of`` (K, 3, 3): (B,) indices and (B,) whether there was one."""
    far = torch.rad2deg(geodesic_distance(rotations[:, None], pose[None])) >= DISTANT_DEG  # (G, B)
    turn = rotations[:, None] @ pose[None].transpose(-1, -2)  # candidate = turn · pose
    far &= ~turned_by_operator(turn, mates_of, SYMMETRY_BASIN_DEG)
    return scores.masked_fill(~far, float("-inf")).argmax(0), far.any(0)


@torch.no_grad()
def search_batch(
    grid: torch.Tensor,
    table: tuple[torch.Tensor, torch.Tensor],
    rotations: torch.Tensor,
    spectrum: torch.Tensor,
    ctf: torch.Tensor,
    k: torch.Tensor,
    box: int,
    pose: tuple[torch.Tensor, torch.Tensor],
    seed: int,
    mates_of: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For images (B, P) at poses (rotations (B, 3, 3), shifts (B, 2) px): the better per image of the pose
    and what the dense search found, both refined in the last ball (rotations (B, 3, 3), shifts (B, 2)),
    and that pose's margin (B,) in nats over the best distant grid pose, refined as the found ones (NaN
    where every distant pose is a symmetry mate of ``mates_of`` (K, 3, 3) operators; default none).
    ``table``: the slices (G, P) of the Hartley ``grid`` (D, D, D) on ``rotations`` (G, 3, 3) at
    frequencies ``k`` (P, 2), and their squares.
    The grid is searched over :func:`window` about the box centre, whatever the pose's shift: a particle
    on a wrong basin often has a wrong shift too. The images are whitened, so a pose's log-likelihood with
    the model's scale fitted is its score squared over two (plus a constant): the margin is
    ``(s² − s_distant²) / 2``, a score below zero counted as zero (no negative scale)."""
    device = grid.device
    rot, shift = pose
    b = len(rot)
    offsets = window(box, device)
    scores, which = _grid_scores(*table, spectrum, ctf, k, box, offsets)
    top = scores.topk(TOP_K, dim=0).indices.T  # (B, K)
    cand = (rotations[top].reshape(-1, 3, 3), offsets[which.T.gather(1, top)].reshape(-1, 2))
    many = (grid, spectrum.repeat_interleave(TOP_K, 0), ctf.repeat_interleave(TOP_K, 0), k, box)
    cand_rot, cand_shift, found = _refined(many, cand, seed)
    found = found.reshape(b, TOP_K)
    best = found.argmax(1)
    ar = torch.arange(b, device=device)
    found_rot = cand_rot.reshape(b, TOP_K, 3, 3)[ar, best]
    found_shift = cand_shift.reshape(b, TOP_K, 2)[ar, best]
    last = ball(BALLS[-1][0], seed + len(BALLS) - 1, device, BALLS[-1][1])
    fine = shift_grid(0.5, 0.25, device)
    now_rot, now_shift, now = best_local_poses(grid, spectrum, ctf, k, box, rot, shift, last, fine)
    better = found[ar, best] > now
    end_rot = torch.where(better[:, None, None], found_rot, now_rot)
    end_shift = torch.where(better[:, None], found_shift, now_shift)
    ops = np.zeros((0, 3, 3)) if mates_of is None else mates_of
    distant, exists = _best_distant(scores, rotations, end_rot, ops)
    rival = (rotations[distant], offsets[which[distant, ar]])
    rival_score = _refined((grid, spectrum, ctf, k, box), rival, seed)[2]
    score = torch.maximum(found[ar, best], now).clamp_min(0)
    margin = (score**2 - rival_score.clamp_min(0) ** 2) / 2
    return end_rot, end_shift, torch.where(exists, margin, torch.full_like(margin, float("nan")))


def window(box: int, device: torch.device | str) -> torch.Tensor:
    """(S, 2) px: the shifts the grid is searched over, the wide re-search's window about the box centre
    (``box`` · WIDE_WINDOW_FRACTION) in 1-px steps."""
    return shift_grid(box * WIDE_WINDOW_FRACTION, 1.0, device)


def batch_size(rotations: int, box: int) -> int:
    """Particles scored at once against ``rotations`` grid rotations at ``box``: SCORES in all."""
    return max(1, SCORES // (rotations * len(window(box, "cpu"))))


def search_doubtful(
    particles: ParticleSet,
    poses: tuple[np.ndarray, np.ndarray],
    members: list[np.ndarray],
    margin: np.ndarray,
    out: Path | None = None,
    operators: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    mates_of: np.ndarray | None = None,
) -> Searched:
    """Search the poses of the particles in doubt (:func:`in_doubt` of ``margin`` (n,) nats, per half of
    ``members``) over the whole rotation group, each against its own half's map without its held-out
    subset, PASSES times.

    ``particles`` are at the working box; ``poses`` rotations (n, 3, 3) and shifts (n, 2, px); ``operators``
    the imposed group's. A search saved in run folder ``out`` from the same poses and particles in doubt is
    not redone. The report counts the particles searched and those that end on another basin (further than
    ``research.FAR_DEG`` from the start, a symmetry mate of ``operators`` not counted). The margins are the
    last pass's (:func:`search_batch`), the mates of the map's detected group ``mates_of`` (K, 3, 3
    operators) not counted, as the mate check does not count them.
    """
    device = torch.device(device)
    picked = [in_doubt(margin, m) for m in members]
    key = start_key(poses[0], poses[1], picked)
    saved = out / SAVED if out is not None else None
    searched = np.zeros(len(poses[0]), bool)
    searched[np.concatenate(picked)] = True
    resumed = load_rounds(saved, key, "margin")
    if resumed is not None:
        rot, shift, (report,), found_margin = resumed
        counts = {name: int(report[name]) for name in ("searched", "moved", "passes")}
        moved = moved_basin(poses[0], rot, operators)
        return Searched(rot, shift, {**report, **counts}, searched, found_margin, moved)
    t0 = time.perf_counter()
    rot, shift = poses[0].copy(), poses[1].copy()
    found_margin = np.full(len(rot), np.nan)
    n_searched = sum(len(p) for p in picked)
    passes = PASSES if n_searched else 0
    disk = FrequencyDisk(particles.box, particles.pixel_size, device)
    rotations = random_rotations(ROTATIONS, torch.Generator().manual_seed(seed)).to(device)
    for i in range(passes):
        log.info(
            "searching %d particles in doubt over every rotation (pass %d of %d)…", n_searched, i + 1, passes
        )
        refs = references(particles, (rot, shift), members, operators, device)
        whiten = 1.0 / noise_sigma(particles, refs, (rot, shift), members, disk, seed)
        n_points = disk.count(REACH * particles.box * particles.pixel_size / refs.resolution)
        for c, part in enumerate(picked):
            _search_half(
                particles,
                refs,
                (c, part),
                (rot, shift, found_margin),
                rotations,
                disk,
                whiten,
                n_points,
                seed,
                mates_of,
            )
    moved = moved_basin(poses[0], rot, operators)
    wall = time.perf_counter() - t0
    report = {"searched": n_searched, "moved": int(moved.sum()), "passes": passes, "wall_s": wall}
    if saved is not None:
        save_rounds(saved, key, rot, shift, [report], margin=found_margin)
    return Searched(rot, shift, report, searched, found_margin, moved)


def moved_basin(start: np.ndarray, end: np.ndarray, operators: np.ndarray | None) -> np.ndarray:
    """(n,) bool: which rotations ``end`` (n, 3, 3) are on another basin than ``start`` (n, 3, 3): further
    than ``research.FAR_DEG``, and not ``start`` turned by one of the symmetry ``operators`` (G, 3, 3, the
    identity first, as ``group_operators`` gives them)."""
    turn = torch.as_tensor(end @ np.swapaxes(start, 1, 2), dtype=torch.float64)  # end = turn · start
    ops = np.eye(3)[None] if operators is None else operators
    return (~turned_by_operator(turn, ops, FAR_DEG)).numpy()


def _search_half(
    particles: ParticleSet,
    refs: HalfReferences,
    which: tuple[int, np.ndarray],
    found: tuple[np.ndarray, np.ndarray, np.ndarray],
    rotations: torch.Tensor,
    disk: FrequencyDisk,
    whiten: torch.Tensor,
    n_points: int,
    seed: int,
    mates_of: np.ndarray | None,
) -> None:
    """Search the particles ``part`` of half ``half`` (``which``), in place in ``found``: their rotations,
    shifts and margins."""
    half, part = which
    rot, shift, margin = found
    device, k = disk.k.device, disk.k[:n_points]
    batch = batch_size(len(rotations), disk.box)
    for held in range(HELD_OUT):
        sel = part[held_out_subset(part) == held]
        if not len(sel):
            continue
        grid = refs.grid(half, without=held)
        table = torch.cat(
            [extract_slices(grid, rotations[i : i + SLICES], k) for i in range(0, len(rotations), SLICES)]
        )
        power = table * table
        for start in range(0, len(sel), batch):
            idx = sel[start : start + batch]
            b = image_batch(particles, idx, disk, whiten)
            pose = (
                torch.as_tensor(rot[idx], dtype=torch.float32, device=device),
                torch.as_tensor(shift[idx], dtype=torch.float32, device=device),
            )
            r, s, m = search_batch(
                grid,
                (table, power),
                rotations,
                b.spectrum[:, :n_points],
                b.ctf[:, :n_points],
                k,
                disk.box,
                pose,
                seed,
                mates_of,
            )
            rot[idx], shift[idx], margin[idx] = r.cpu().numpy(), s.cpu().numpy(), m.cpu().double().numpy()
