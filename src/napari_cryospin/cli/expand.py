"""``cryospin expand``: a run's poses.star written symmetry-expanded (one row per mate), as RELION's
``relion_particle_symmetry_expand`` does, for downstream local refinement or symmetry-relaxed work."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

EXPANDED_STAR = "poses_expanded.star"
"""Where the expanded poses go in the run folder (unless ``--out``)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``expand`` and its options."""
    parser = subparsers.add_parser(
        "expand",
        help="write a run's poses symmetry-expanded (one row per symmetry mate)",
        description="Each particle of RUN/poses.star once per operator of the point group: by default the "
        "group the run detected in its half maps (metrics.json final.symmetry: its axes and centre), or "
        "--symmetry G for a map in the group's RELION frame (axes through the box centre).",
    )
    parser.add_argument("run_folder", type=Path, help="a finished run folder (poses.star, metrics.json)")
    parser.add_argument("--symmetry", help="point group (C2…, Dn, T, O, I) about the box centre")
    parser.add_argument("--out", type=Path, help=f"the expanded STAR (default RUN/{EXPANDED_STAR})")
    parser.set_defaults(run=run)
    return parser


def _detected(folder: Path, pixel_size: float) -> tuple[str, np.ndarray, np.ndarray]:
    """The run's detected group, its operators (G, 3, 3) in the map's frame and their centre (x, y, z px
    of the poses' images), from metrics.json."""
    from ..geometry.symmetry import framed_operators

    path = folder / "metrics.json"
    try:
        final = json.loads(path.read_text())["final"]
        found, maps = final["symmetry"], final["maps"]
        group, frame = found["group"], found["frame"]
        centre = np.asarray(found["centre_voxels"], np.float64) * maps["working_voxel_size"] / pixel_size
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: no detected symmetry to expand by ({exc.__class__.__name__}). Fix: give --symmetry G, "
            "or expand a run finished by this version."
        ) from None
    return group, framed_operators(group, frame), centre


def run(args: argparse.Namespace) -> int:
    """Expand the poses; one line says how many rows were written and where."""
    from ..data.particles import load_particles
    from ..data.poses_out import write_poses_star
    from ..geometry.symmetry import canonical, expand_poses, group_operators

    folder = args.run_folder
    particles = load_particles(folder / "poses.star")
    if particles.rotations is None or particles.shifts is None:
        raise ValueError(f"{folder / 'poses.star'}: has no poses. Fix: give a finished run folder.")
    if args.symmetry:
        group = canonical(args.symmetry)
        operators, centre = group_operators(group), np.zeros(3)
    else:
        group, operators, centre = _detected(folder, particles.pixel_size)
    if len(operators) == 1:
        raise ValueError(
            f"{folder}: the run found no symmetry (C1), so there are no mates to expand by. "
            "Fix: give --symmetry G if you know the group and the map is in its frame."
        )
    rot, shift, index = expand_poses(particles.rotations, particles.shifts, operators, centre)
    out = args.out or folder / EXPANDED_STAR
    write_poses_star(out, particles.subset(index), rot, shift)
    print(f"{out}: {len(index)} rows, {len(particles)} particles × {len(operators)} {group} mates")
    return 0
