"""Convert a RELION STAR + stack into cryoDRGN's inputs (stack, ctf.pkl, poses.pkl) and back.

Conventions, read from cryoDRGN 4.3.1's ``parse_ctf_star``, ``parse_pose_star``, ``utils.R_from_relion``,
``ctf.compute_ctf`` and ``backproject_voxel`` and checked by known-pose backprojection (docs/benchmarks.md):

- CTF: an (N, 9) float32 array ``[D, Apix, dfU, dfV, dfAngle, kV, Cs mm, w, phase shift deg]``; cryoDRGN's
  CTF has H(0) = −w, the same sign as ``../shared/CONVENTIONS.md``.
- Rotations: cryoDRGN's matrix is ``Rᵀ`` (RELION's own matrix A) for the conventions' ``R``; it rotates
  lattice coordinates as ``coords @ rot``.
- Translations: RELION's origin in pixels with the same sign, divided by the box (a fraction of the box).
- Data sign: cryoDRGN inverts the images unless told ``--uninvert-data``; with its CTF sign, images of dark
  protein (as here) need ``--uninvert-data`` for a map of positive density.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

import mrcfile
import numpy as np

from napari_cryospin.data.particles import ParticleSet, load_particles

UNINVERT_FLAG = "--uninvert-data"
"""The cryoDRGN flag that images of dark protein (the project's convention) need."""


def ctf_array(particles: ParticleSet) -> np.ndarray:
    """cryoDRGN's (N, 9) CTF table ``[D, Apix, dfU, dfV, dfAngle, kV, Cs, w, phase shift]``."""
    ctf = particles.ctf
    if ctf is None:
        raise ValueError(f"{particles.path.name}: no CTF parameters; cryoDRGN needs them")
    out = np.empty((len(particles), 9), dtype=np.float32)
    out[:, 0] = particles.box
    out[:, 1] = particles.pixel_size
    out[:, 2] = ctf.defocus_u
    out[:, 3] = ctf.defocus_v
    out[:, 4] = ctf.defocus_angle
    out[:, 5] = ctf.voltage
    out[:, 6] = ctf.cs
    out[:, 7] = ctf.amplitude_contrast
    out[:, 8] = ctf.phase_shift
    return out


def poses_to_cryodrgn(
    rotations: np.ndarray, shifts_px: np.ndarray, box: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rot, trans) as cryoDRGN stores them: ``Rᵀ`` and the RELION origin as a fraction of the box."""
    rot = np.ascontiguousarray(np.swapaxes(np.asarray(rotations, np.float64), 1, 2))
    return rot, np.asarray(shifts_px, np.float64) / box


def poses_from_cryodrgn(rot: np.ndarray, trans: np.ndarray | None, box: int) -> tuple[np.ndarray, np.ndarray]:
    """(R, shifts in pixels with RELION's sign) from cryoDRGN's (rot, trans-as-fraction)."""
    rotations = np.swapaxes(np.asarray(rot, np.float64), 1, 2)
    shifts = np.zeros((len(rotations), 2)) if trans is None else np.asarray(trans, np.float64) * box
    return rotations, shifts


def load_cryodrgn_poses(path: str | os.PathLike, box: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a cryoDRGN pose .pkl (a (rot, trans) tuple or a bare rot array) into (R, shifts in pixels)."""
    with open(path, "rb") as f:
        poses = pickle.load(f)
    if isinstance(poses, tuple | list):
        return poses_from_cryodrgn(poses[0], poses[1] if len(poses) > 1 else None, box)
    return poses_from_cryodrgn(poses, None, box)


def _single_stack_in_order(particles: ParticleSet) -> Path | None:
    """The stack file when the particles are all of it, in order, at its stored box; else None."""
    stack = particles.stack
    if len(stack.files) != 1 or stack.box != stack.original_box:
        return None
    with mrcfile.mmap(stack.files[0], permissive=True) as mrc:
        n_stored = 1 if mrc.data.ndim == 2 else mrc.data.shape[0]
    in_order = np.array_equal(stack.image_index, np.arange(len(stack)))
    return stack.files[0] if in_order and n_stored == len(stack) else None


def write_stack(particles: ParticleSet, path: Path, batch: int = 1024) -> Path:
    """A .mrcs holding the particles in STAR order: a symlink to the original when it already is one."""
    path.unlink(missing_ok=True)
    original = _single_stack_in_order(particles)
    if original is not None:
        path.symlink_to(original.resolve())
        return path
    n, box = len(particles), particles.box
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        for start in range(0, n, batch):
            mrc.data[start : start + batch] = particles.stack[start : start + batch]
        mrc.voxel_size = particles.pixel_size
        mrc.set_image_stack()
    return path


def convert(star: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, str | int | float | None]:
    """Write ``particles.mrcs``, ``ctf.pkl`` and (when the STAR has poses) ``poses.pkl`` into ``out_dir``.

    Returns a summary (also saved as ``conversion.json``) naming the files and the cryoDRGN flags to use.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    particles = load_particles(star)
    stack = write_stack(particles, out / "particles.mrcs")
    with open(out / "ctf.pkl", "wb") as f:
        pickle.dump(ctf_array(particles), f)
    poses_path = None
    if particles.rotations is not None:
        shifts = particles.shifts if particles.shifts is not None else np.zeros((len(particles), 2))
        poses_path = out / "poses.pkl"
        with open(poses_path, "wb") as f:
            pickle.dump(poses_to_cryodrgn(particles.rotations, shifts, particles.box), f)
    summary: dict[str, str | int | float | None] = {
        "star": str(Path(star).resolve()),
        "particles": str(stack),
        "ctf": str(out / "ctf.pkl"),
        "poses": None if poses_path is None else str(poses_path),
        "n": len(particles),
        "box": particles.box,
        "pixel_size": particles.pixel_size,
        "cryodrgn_flags": UNINVERT_FLAG,
    }
    (out / "conversion.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python bench/cryodrgn_convert.py STAR --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("star", help="RELION .star (images relative to its folder)")
    parser.add_argument("--out", required=True, help="output folder for cryoDRGN's inputs")
    args = parser.parse_args(argv)
    summary = convert(args.star, args.out)
    json.dump(summary, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
