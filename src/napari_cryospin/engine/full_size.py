"""The final maps at the stack's own box and pixel size, from the poses found at the working box.

The engine works on Fourier-cropped images (``engine/working_box.py``); its poses hold at any sampling
once shifts are scaled by the box ratio (pixels of the working box → pixels of the stored images). The
two half maps are reconstructed from the stored images, a batch at a time (the stack is read, never
copied), with the same estimator and halves as the working-box maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.mrc import write_volume
from ..physics.reconstruction import accumulate, solve_map
from .doubtful_poses import search_doubtful
from .local_refine import halves_resolution, refine_locally

if TYPE_CHECKING:
    from ..data.particle_set import ParticleSet
    from .mates import MateCheck
    from .run_model import RunModel

WORKING_MAP = "volume_working.mrc"
"""The map at the working box, written beside volume.mrc when the engine worked on cropped images."""

BATCH_VALUES = 1 << 24
"""Image values read per backprojection batch (64 MiB of float32): 256 images of box 256."""


@dataclass
class FullSizeMaps:
    """(full, half A, half B) maps (L, L, L) at the stored box ``box`` and pixel size ``voxel`` (Å)."""

    full: np.ndarray
    half_a: np.ndarray
    half_b: np.ndarray
    box: int
    voxel: float


def full_size_maps(
    particles: ParticleSet,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    halves: list[np.ndarray],
    device: str = "cpu",
    operators: np.ndarray | None = None,
) -> FullSizeMaps | None:
    """Backproject the particles of ``halves`` (two index arrays) at the stored box; None when already there.

    ``particles`` are served at the working box; ``rotations`` (n, 3, 3) and ``shifts_px`` (n, 2, pixels of
    the working box, RELION origin sign) are the poses found there; ``operators`` the imposed point group.
    """
    box = particles.stack.original_box
    if box == particles.box:
        return None
    return maps_at_box(particles, rotations, shifts_px, halves, box, device, operators)


def maps_at_box(
    particles: ParticleSet,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    halves: list[np.ndarray],
    box: int,
    device: str = "cpu",
    operators: np.ndarray | None = None,
) -> FullSizeMaps:
    """(full, half A, half B) of the particles of ``halves`` backprojected at ``box`` (poses as in
    :func:`full_size_maps`)."""
    stored = particles.at_box(box)
    shifts = np.asarray(shifts_px) * (box / particles.box)
    batch = max(1, BATCH_VALUES // (box * box))
    acc = [accumulate(stored, rotations, shifts, members, batch, device, operators) for members in halves]
    return FullSizeMaps(
        solve_map(acc[0] + acc[1]), solve_map(acc[0]), solve_map(acc[1]), box, stored.pixel_size
    )


def write_final_maps(
    model: RunModel,
    out: Path,
    working: tuple[np.ndarray, np.ndarray, np.ndarray],
    halves: list[np.ndarray],
    poses: tuple[np.ndarray, np.ndarray],
    mates: MateCheck | None = None,
) -> tuple[dict, FullSizeMaps, tuple[np.ndarray, np.ndarray], MateCheck | None]:
    """Write volume.mrc (and half_a.mrc, half_b.mrc) at the stored box in run folder ``out``; return what
    was written, the maps (the working ones when the engine worked at the stored box), which the run is
    judged by, the poses they were made with, and the mate check of those poses.

    ``working`` are the (full, half A, half B) maps at the working box made from ``poses`` (rotations
    (n, 3, 3), shifts (n, 2) px of the working box) of the particles of ``halves``. With ``--local-refine
    auto`` the poses are refined first (``engine/local_refine.py``: beyond the working box where it limits the
    map, else at it), the particles whose margin in the mate check ``mates`` puts their pose in doubt are
    searched again over every rotation (``engine/doubtful_poses.py``; their margins then the search's), and
    the maps made again from the poses. The maps are the stored box's when the engine worked on cropped
    images, and the working-box map is then kept as volume_working.mrc.
    """
    rot, shift = poses
    args = (halves, model.device, model.symmetry)
    sized = full_size_maps(model.particles, rot, shift, *args)
    refinement = None
    if model.config.local_refine == "auto":
        judged = sized or FullSizeMaps(*working, model.box, model.particles.pixel_size)
        resolution = halves_resolution(judged.half_a, judged.half_b, judged.voxel)
        refined = refine_locally(
            model.particles,
            poses,
            halves,
            resolution,
            judged.voxel,
            judged.box,
            out,
            model.symmetry,
            model.device,
            model.config.seed,
        )
        rot, shift, refinement = refined.rotations, refined.shifts, refined.report
        if mates is not None:
            searched = search_doubtful(
                model.particles,
                (rot, shift),
                halves,
                mates.margin,
                out,
                model.symmetry,
                model.device,
                model.config.seed,
                mates.operators,
            )
            rot, shift = searched.rotations, searched.shifts
            refinement["doubtful"] = searched.report
            mates = mates.after_search(searched.searched, searched.margin, searched.moved)
        sized = full_size_maps(model.particles, rot, shift, *args)
        if sized is None:
            now = maps_at_box(model.particles, rot, shift, halves, model.box, model.device, model.symmetry)
            working = (now.full, now.half_a, now.half_b)
    if sized is None:
        full, half_a, half_b = working
        box, voxel = model.box, model.particles.pixel_size
    else:
        full, half_a, half_b, box, voxel = sized.full, sized.half_a, sized.half_b, sized.box, sized.voxel
        write_volume(out / WORKING_MAP, working[0], model.particles.pixel_size)
    write_volume(out / "volume.mrc", full, voxel)
    if model.config.half_maps:
        write_volume(out / "half_a.mrc", half_a, voxel)
        write_volume(out / "half_b.mrc", half_b, voxel)
    info = {
        "box": box,
        "voxel_size": voxel,
        "working_box": model.box,
        "working_voxel_size": model.particles.pixel_size,
        "local_refinement": refinement,
    }
    return info, FullSizeMaps(full, half_a, half_b, box, voxel), (rot, shift), mates
