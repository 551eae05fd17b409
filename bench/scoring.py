"""Scoring shared by the benchmarks: a dataset's truth, its known-pose ceiling, and poses against the truth.

Pose errors are geodesic angles after one global alignment over both hands (symmetry-aware when the
particle's symmetry operators are given); FSC against the truth comes from backprojecting the particles with
the poses brought into the truth's frame, the same estimator as the known-pose ceiling, so the two differ
by the poses only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import ParticleSet, load_particles
from napari_cryospin.diagnostics.polarity import choose_polarity
from napari_cryospin.metrics.alignment import AlignmentResult, poses_in_truth_frame, shift_errors
from napari_cryospin.metrics.fsc import fsc, resolution_at
from napari_cryospin.metrics.symmetry import align_rotations_symmetric
from napari_cryospin.physics.reconstruction import backproject


def truth_paths(folder: Path) -> tuple[Path, Path]:
    """(STAR with the true poses, true map) of a dataset folder, in either layout the project meets."""
    for star, vol in (
        (folder / "truth" / "particles_with_poses.star", folder / "truth" / "gt_volume.mrc"),
        (folder / "truth.star", folder / "truth_volume.mrc"),
    ):
        if star.exists() and vol.exists():
            return star, vol
    raise SystemExit(f"{folder}: no truth (truth/particles_with_poses.star or truth.star) found")


@dataclass
class Truth:
    """A dataset's particles with their true poses, the true map (z, y, x) and its voxel size (Å)."""

    particles: ParticleSet
    volume: np.ndarray
    voxel: float


def load_truth(folder: Path) -> Truth:
    """The truth of a dataset folder (see :func:`truth_paths`)."""
    star, vol = truth_paths(folder)
    volume, voxel = read_volume(vol)
    particles = load_particles(star)
    particles.stack.sign = choose_polarity(particles).sign  # protein-white stacks are backprojected inverted
    return Truth(particles, volume, voxel)


def fsc_resolutions(volume: np.ndarray, truth: Truth) -> tuple[float, float]:
    """FSC 0.5 and FSC 0.143 resolutions (Å) of a map against the true map, no alignment."""
    freq, values = fsc(volume, truth.volume, truth.voxel)
    return resolution_at(freq, values, 0.5), resolution_at(freq, values, 0.143)


def ceiling(truth: Truth, n: int | None = None) -> tuple[float, float]:
    """Known-pose ceiling: FSC 0.5 and 0.143 (Å) of the true-pose backprojection of the first ``n``
    particles (default all) against the true map."""
    t = truth.particles if n is None or n >= len(truth.particles) else truth.particles.subset(np.arange(n))
    return fsc_resolutions(backproject(t, t.rotations, t.shifts), truth)


@dataclass
class PoseScore:
    """Pose accuracy of one run: rotation errors (°), median shift error (px, after the maps' origin offset),
    FSC 0.5 / 0.143 (Å) of the poses' backprojection against the truth, and the global alignment used."""

    rot_median: float
    rot_mean: float
    shift_median: float
    fsc05: float
    fsc0143: float
    alignment: AlignmentResult


def score_poses(
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    truth: Truth,
    operators: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> PoseScore:
    """Score estimated poses (n, 3, 3) and shifts (n, 2, pixels of the truth) of the first n particles.

    ``operators`` (k, 3, 3): the particle's symmetry rotations in the truth's map frame (none: asymmetric).
    ``rows``: score only these particles (e.g. one half, before the halves share a frame).
    """
    rows = np.arange(len(rotations)) if rows is None else np.asarray(rows)
    rotations, shifts_px = np.asarray(rotations)[rows], np.asarray(shifts_px)[rows]
    t = truth.particles
    n = len(rotations)
    al = align_rotations_symmetric(rotations, t.rotations[rows], operators)
    rot, shifts = poses_in_truth_frame(al, rotations, shifts_px, t.shifts[rows])
    sh = shift_errors(shifts, t.shifts[rows])  # after the map's origin offset, a gauge freedom like A
    subset = t if n == len(t) else t.subset(rows)
    res05, res0143 = fsc_resolutions(backproject(subset, rot, shifts), truth)
    return PoseScore(al.median, al.mean, float(np.median(sh)), res05, res0143, al)
