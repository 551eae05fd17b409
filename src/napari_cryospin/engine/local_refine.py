"""Gold-standard local refinement of the final poses: beyond the working box where it limits the map, at
the working box where it does not.

Each round reconstructs each half, masks it and weights it by the halves' FSC, and searches every
particle's pose in a ball of rotations and a shift window about its current one against its own half's map
without the particle's held-out subset (``research.HELD_OUT``: an image in the map it is scored against
pulls the search towards the pose it was inserted at). The balls shrink round by round; rounds stop when
one gained the halves less than ``MIN_GAIN``. When the full-size half maps agree nearly out to the working
box's Nyquist (``engine/working_box.py``), the poses were found without frequencies the map could use: the
rounds run at a box whose Nyquist lies ``MARGIN`` × beyond the halves' resolution (RELION auto-refine's
rule: the box grows with the resolution; never above the stored box). Otherwise the map is limited by the
poses themselves: auto-decoding leaves them near, not at, their best (at SNR 0.05, an 84 kDa elongated
particle's right-basin poses sat at 7.4° median where the known-pose half map allows 5.0°), and the rounds
run at the working box with wider balls. The halves never see each other's particles or maps. Rounds are
saved to the run folder, so a stopped run resumes where it was.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.safe_write import save_npz
from ..metrics.fsc import fsc
from ..model.likelihood import FrequencyDisk, prepare_batch, shift_grid
from ..physics.fourier import fourier_to_hartley, hartley_centered
from ..physics.reconstruction import Accumulator, accumulate, solve_map
from ..physics.shifts import centering_phase
from ..physics.slicing import extract_slices
from ..postprocess.mask import auto_mask
from ..postprocess.sharpen import fsc_weight
from ..postprocess.shells import apply_per_shell
from .research import HELD_OUT, ball, held_out_subset
from .validity import masked_fsc, radius_at

if TYPE_CHECKING:
    from ..data.particle_set import ParticleSet

log = logging.getLogger(__name__)

MARGIN = 1.25
"""The refinement box's Nyquist frequency is at least this many times the halves' FSC 0.143 frequency."""

BOX_STEP = 8
"""Refinement boxes are multiples of this (FFT-friendly sizes), capped at the stored box."""

ROUNDS = ((2.0, 1.0, 32), (1.0, 0.5, 16), (0.5, 0.25, 16))
"""(ball radius in degrees, shift window in pixels of the stored box, random rotations in the ball) per
round beyond the working box. The working box's poses then sit within ~1° and half a working pixel of their
best; each ball spans the previous one's spacing."""

WORKING_ROUNDS = ((6.0, 1.0, 64), (3.0, 0.5, 48), (1.5, 0.5, 32))
"""The same per round at the working box, the shift window in pixels of the working box. The first ball
spans auto-decoding's error at SNR 0.05 (1BD2: poses moved 3.9° median in it, the map 11.45 → 10.0 Å
against the truth)."""

SHIFT_STEPS = 2
"""Shift offsets per window radius (a window of 1 px is searched in steps of 0.5 px)."""

REACH = 1.1
"""Frequencies up to this many times the halves' FSC 0.143 frequency are compared (the FSC weighting
leaves little beyond it)."""

MIN_GAIN = 0.01
"""Rounds stop when the last one improved the halves' resolution by less than this fraction: the
poses were already as good as the map allows (a box-128 set at SNR 0.1: 4.42 → 4.41 Å; ribosome70s at the
working box: 14.13 → 14.11 Å, where a third round would only have moved poses by noise)."""

NOISE_SAMPLE = 1000
"""Particles the noise spectrum is measured on (their residuals at their current poses)."""

BATCH = 16
"""Particles scored at once."""

SAVED = "local_refine.npz"
"""The run folder's record of the rounds done and the poses after the last, for ``--resume``."""


@dataclass
class Refined:
    """Refined poses: rotations (n, 3, 3), shifts (n, 2, pixels of the working box), and the report."""

    rotations: np.ndarray
    shifts: np.ndarray
    report: dict = field(default_factory=dict)


def refinement_box(resolution: float, voxel: float, box: int, working: int, stored: int) -> int:
    """Box (pixels of the stored sampling's field of view) whose Nyquist is ``MARGIN`` × past
    ``resolution`` (Å), for maps of ``box`` voxels of ``voxel`` Å; within [``working``, ``stored``]."""
    extent = box * voxel  # Å across the box, the same at every sampling
    wanted = math.ceil(2 * MARGIN * extent / resolution / BOX_STEP) * BOX_STEP
    return int(min(stored, max(working, wanted)))


def halves_resolution(half_a: np.ndarray, half_b: np.ndarray, voxel: float) -> float:
    """FSC 0.143 (Å) of two half maps under the engine's soft sphere (``validity.masked_fsc``)."""
    radius = radius_at(masked_fsc(half_a, half_b), 0.143)
    return half_a.shape[0] * voxel / max(radius, 1e-6)


def start_key(rotations: np.ndarray, shifts: np.ndarray, members: list[np.ndarray]) -> str:
    """A digest of the poses and halves a refinement starts from (a saved one resumes only from these)."""
    h = hashlib.sha1()
    for a in (rotations, shifts, *members):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass
class HalfReferences:
    """Each half's gridded sums per held-out subset (``sums[half][subset]``) and in all (``totals[half]``),
    the mask and FSC weight its maps share, and the halves' FSC 0.143 (Å)."""

    sums: list[list[Accumulator]]
    totals: list[Accumulator]
    mask: np.ndarray
    weight: np.ndarray
    resolution: float

    def grid(self, half: int, without: int | None = None) -> torch.Tensor:
        """Half ``half``'s map (all its images, or all but subset ``without``), masked and FSC-weighted, as a
        Hartley grid (D, D, D)."""
        total = self.totals[half]
        acc = total if without is None else total - self.sums[half][without]
        vol = apply_per_shell(solve_map(acc) * self.mask, self.weight)
        return hartley_centered(torch.from_numpy(vol).to(acc.den.device), 3)


def references(
    particles: ParticleSet,
    poses: tuple[np.ndarray, np.ndarray],
    members: list[np.ndarray],
    operators: np.ndarray | None,
    device: torch.device,
) -> HalfReferences:
    """Backproject each half's held-out subsets at ``particles``' box; the halves' mask and FSC weight."""
    rot, shift = poses
    sums = [
        [
            accumulate(particles, rot, shift, m[held_out_subset(m) == k], 64, device, operators)
            for k in range(HELD_OUT)
        ]
        for m in members
    ]
    totals = [sum(parts[1:], parts[0]) for parts in sums]
    halves = [solve_map(total) for total in totals]
    voxel = particles.pixel_size
    resolution = halves_resolution(halves[0], halves[1], voxel)
    mask, _ = auto_mask(halves[0] + halves[1], halves[0], halves[1], voxel)
    weight = fsc_weight(fsc(halves[0] * mask, halves[1] * mask, voxel)[1])
    return HalfReferences(sums, totals, mask, weight, resolution)


def noise_sigma(
    particles: ParticleSet,
    refs: HalfReferences,
    poses: tuple[np.ndarray, np.ndarray],
    members: list[np.ndarray],
    disk: FrequencyDisk,
    seed: int,
) -> torch.Tensor:
    """σ (P,) of the noise on ``disk``, per integer shell: the residual of sampled images against their
    own half's model at their current poses, each model scaled to its image (least squares)."""
    rot, shift = poses
    rng = np.random.default_rng(seed)
    shells = disk.radius.round().long()
    total = torch.zeros(int(shells.max()) + 1, device=disk.k.device)
    count = torch.zeros_like(total)
    for c, m in enumerate(members):
        grid = refs.grid(c)
        pick = np.sort(rng.choice(m, min(len(m), NOISE_SAMPLE // 2), replace=False))
        for start in range(0, len(pick), BATCH * 4):
            idx = pick[start : start + BATCH * 4]
            b = image_batch(particles, idx, disk, None)
            r = torch.as_tensor(rot[idx], dtype=torch.float32, device=disk.k.device)
            s = torch.as_tensor(shift[idx], dtype=torch.float32, device=disk.k.device)
            model = extract_slices(grid, r, disk.k) * b.ctf
            obs = fourier_to_hartley(b.spectrum * centering_phase(disk.k / disk.box, s))
            power = (model * model).sum(-1, keepdim=True).clamp_min(1e-20)
            scale = (model * obs).sum(-1, keepdim=True) / power
            resid = (obs - scale * model) ** 2
            total.index_add_(0, shells, resid.sum(0))
            count.index_add_(0, shells, torch.full_like(shells, len(b.idx), dtype=torch.float32))
    sigma2 = total / count.clamp_min(1)
    return sigma2[shells].clamp_min(1e-12 * float(sigma2.max())).sqrt()


def image_batch(particles: ParticleSet, idx: np.ndarray, disk: FrequencyDisk, whiten: torch.Tensor | None):
    """Spectra and CTFs of particles ``idx`` on ``disk`` (whitened by ``whiten`` (P,) = 1/σ when given)."""
    device = disk.k.device
    images = torch.as_tensor(particles.stack[idx], device=device)
    w = None if whiten is None else whiten.expand(len(idx), -1)
    return prepare_batch(torch.as_tensor(idx, device=device), images, particles.ctf, disk, w)


def best_local_poses(
    grid: torch.Tensor,
    spectrum: torch.Tensor,
    ctf: torch.Tensor,
    k: torch.Tensor,
    box: int,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    turns: torch.Tensor,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best of ``rotations`` (B, 3, 3) · ``turns`` (T, 3, 3) and ``shifts`` (B, 2, px) + ``offsets``
    (S, 2) for images with ``spectrum`` (B, P) and ``ctf`` (B, P) on frequencies ``k`` (P, 2, cycles per
    box ``box``), against the Hartley ``grid`` (D, D, D): (rotations, shifts, scores), each (B, …).

    The score is the image's projection onto the model, ``⟨y, m⟩ / ‖m‖`` (whitened): the likelihood with
    the model's scale fitted per image, so the map's units and the image's contrast do not matter.
    """
    b = rotations.shape[0]
    cand = rotations[:, None] @ turns[None]  # (B, T, 3, 3)
    model = extract_slices(grid, cand, k) * ctf[:, None]  # (B, T, P)
    g = spectrum * centering_phase(k / box, shifts)  # (B, P)
    off = centering_phase(k / box, offsets)  # (S, P)
    cross = (model * g.real[:, None]) @ (off.real - off.imag).T - (model * g.imag[:, None]) @ (
        off.real + off.imag
    ).T  # (B, T, S): ⟨m, Hartley(g · off)⟩
    score = cross / (model * model).sum(-1, keepdim=True).sqrt().clamp_min(1e-20)
    best = score.reshape(b, -1).argmax(1)
    t, s = best // len(offsets), best % len(offsets)
    ar = torch.arange(b, device=rotations.device)
    return cand[ar, t], shifts + offsets[s], score.reshape(b, -1)[ar, best]


def _search_round(
    particles: ParticleSet,
    refs: HalfReferences,
    poses: tuple[np.ndarray, np.ndarray],
    members: list[np.ndarray],
    ball_deg: float,
    window_px: float,
    points: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every member's pose searched locally against its own half's map without the member's held-out subset
    (shifts in ``particles``' px)."""
    device = refs.sums[0][0].den.device
    disk = FrequencyDisk(particles.box, particles.pixel_size, device)
    whiten = 1.0 / noise_sigma(particles, refs, poses, members, disk, seed)
    turns = ball(ball_deg, seed, device, points)
    n_points = disk.count(REACH * particles.box * particles.pixel_size / refs.resolution)
    k = disk.k[:n_points]
    offsets = shift_grid(window_px, window_px / SHIFT_STEPS, device)
    rot, shift = poses[0].copy(), poses[1].copy()
    for c, m in enumerate(members):
        for held in range(HELD_OUT):
            part, grid = m[held_out_subset(m) == held], refs.grid(c, without=held)
            for start in range(0, len(part), BATCH):
                idx = part[start : start + BATCH]
                b = image_batch(particles, idx, disk, whiten)
                r = torch.as_tensor(rot[idx], dtype=torch.float32, device=device)
                s = torch.as_tensor(shift[idx], dtype=torch.float32, device=device)
                spectrum, ctf = b.spectrum[:, :n_points], b.ctf[:, :n_points]
                r, s, _ = best_local_poses(grid, spectrum, ctf, k, disk.box, r, s, turns, offsets)
                rot[idx], shift[idx] = r.cpu().numpy(), s.cpu().numpy()
    return rot, shift


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation angle (°) between rotations ``a`` and ``b`` (n, 3, 3)."""
    trace = np.einsum("nij,nij->n", a, b)
    return np.degrees(np.arccos(np.clip((trace - 1) / 2, -1.0, 1.0)))


def refine_locally(
    particles: ParticleSet,
    poses: tuple[np.ndarray, np.ndarray],
    members: list[np.ndarray],
    resolution: float,
    voxel: float,
    box: int,
    out: Path | None = None,
    operators: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Refined:
    """Refine the poses of ``members`` (two index arrays, the halves): beyond the working box when it limits
    the map, else at the working box.

    ``particles`` are served at the working box; ``poses`` are rotations (n, 3, 3) and shifts (n, 2,
    pixels of the working box); ``resolution`` (Å) is the halves' FSC 0.143 on maps of ``box`` voxels of
    ``voxel`` Å (the full-size half maps), which decides where the rounds run. Rounds
    already saved in run folder ``out`` (same starting poses and halves) are not redone; each round done is
    saved there.
    """
    device = torch.device(device)
    working, stored = particles.box, particles.stack.original_box
    target = refinement_box(resolution, voxel, box, working, stored)
    grow = target > working
    if grow:  # windows in pixels of the working box
        schedule = [(ball_deg, window * working / stored, points) for ball_deg, window, points in ROUNDS]
    else:
        schedule = list(WORKING_ROUNDS)
    key = start_key(poses[0], poses[1], members)
    rot, shift = poses[0].copy(), poses[1].copy()
    rounds: list[dict] = []
    saved = out / SAVED if out is not None else None
    resumed = load_rounds(saved, key)
    if resumed is not None:
        rot, shift, rounds = resumed
        target = int(rounds[-1]["box"])
    stopped = None
    for i in range(len(rounds), len(schedule)):
        t0 = time.perf_counter()
        ball_deg, window, points = schedule[i]
        at, refs = _grown_references(particles, target, (rot, shift), members, operators, device, grow)
        target = at.box
        if rounds and refs.resolution > (1 - MIN_GAIN) * rounds[-1]["halves_resolution"]:
            stopped = f"the halves gained less than {100 * MIN_GAIN:.0f} % in round {len(rounds)}"
            log.info("local refinement stops: %s", stopped)
            break
        log.info(
            "local refinement round %d/%d at box %d (halves at %.2f Å; ball %.1f°, ±%.2f working px)…",
            i + 1,
            len(schedule),
            target,
            refs.resolution,
            ball_deg,
            window,
        )
        ratio = target / working
        found_rot, found_shift = _search_round(
            at, refs, (rot, shift * ratio), members, ball_deg, window * ratio, points, seed + i
        )
        moved = _angles_deg(rot, found_rot)[np.concatenate(members)]
        rot, shift = found_rot, found_shift / ratio
        rounds.append(
            {
                "box": float(target),
                "ball_deg": ball_deg,
                "window_px": window,
                "halves_resolution": refs.resolution,
                "moved_median_deg": float(np.median(moved)),
                "wall_s": time.perf_counter() - t0,
            }
        )
        if saved is not None:
            save_rounds(saved, key, rot, shift, rounds)
    return Refined(rot, shift, {"rounds": rounds, "box": target, "stopped": stopped})


def load_rounds(saved: Path | None, key: str, *arrays: str) -> tuple | None:
    """(rotations, shifts, rounds, then the named ``arrays``): the poses and rounds (a dict of numbers each)
    saved in ``saved`` when it holds them, and every named array, from the start ``key``."""
    if saved is None or not saved.exists():
        return None
    with np.load(saved, allow_pickle=False) as f:
        if str(f["key"]) != key or any(name not in f for name in arrays):
            return None
        names = f["round_keys"].tolist()
        rounds = [dict(zip(names, row, strict=True)) for row in f["rounds"].tolist()]
        return f["rotations"], f["shifts"], rounds, *(f[name] for name in arrays)


def save_rounds(
    saved: Path, key: str, rot: np.ndarray, shift: np.ndarray, rounds: list[dict], **arrays: np.ndarray
) -> None:
    """Record the rounds done, the poses after the last and any other ``arrays``, under the start ``key``."""
    names = list(rounds[0])
    save_npz(
        saved,
        key=np.array(key),
        rotations=rot,
        shifts=shift,
        round_keys=np.array(names),
        rounds=np.array([[r[n] for n in names] for r in rounds], dtype=np.float64),
        **arrays,
    )


def _grown_references(
    particles: ParticleSet,
    box: int,
    poses: tuple[np.ndarray, np.ndarray],
    members: list[np.ndarray],
    operators: np.ndarray | None,
    device: torch.device,
    grow: bool,
) -> tuple[ParticleSet, HalfReferences]:
    """The particles at ``box`` and their references there — at a larger box when ``grow`` and the halves'
    resolution there asks for one (``poses``' shifts in pixels of the working box)."""
    working, stored = particles.box, particles.stack.original_box
    while True:
        at = particles.at_box(box)
        refs = references(at, (poses[0], poses[1] * (box / working)), members, operators, device)
        if not grow:
            return at, refs
        wanted = refinement_box(refs.resolution, at.pixel_size, box, working, stored)
        if wanted <= box:
            return at, refs
        box = wanted
