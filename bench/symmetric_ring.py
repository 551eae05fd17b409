"""A Cn ring map from one subunit's map: the subunit moved off the z axis and copied n times about it.

The symmetric benchmark sets are simulated from such maps (``cryospin simulate ring.mrc …``): the ring's
axis is the map's z axis, so RELION's Cn operators hold in the truth's frame.

Usage: ``python bench/symmetric_ring.py SUBUNIT.mrc OUT.mrc [--fold 5] [--radius 28] [--pad 16]``
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy import ndimage

from napari_cryospin.data.mrc import read_volume, write_volume


def ring(subunit: np.ndarray, voxel: float, fold: int, radius: float) -> np.ndarray:
    """The ``fold`` copies (L, L, L) of ``subunit`` (L, L, L; voxels of ``voxel`` Å), its centre of mass
    moved to ``radius`` Å along x, turned by 360°/fold steps about z (arrays are z, y, x)."""
    centre = np.array(subunit.shape) // 2
    com = np.array(ndimage.center_of_mass(np.clip(subunit, 0, None)))
    placed = ndimage.shift(subunit, centre - com + np.array([0.0, 0.0, radius / voxel]), order=3)
    copies = [
        ndimage.rotate(placed, 360.0 * k / fold, axes=(1, 2), reshape=False, order=3) for k in range(fold)
    ]
    return np.sum(copies, axis=0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    """Write the ring map and say how far it reaches from the centre."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("subunit")
    p.add_argument("out")
    p.add_argument("--fold", type=int, default=5)
    p.add_argument("--radius", type=float, default=28.0, help="Å from the axis to the subunit's centre")
    p.add_argument("--pad", type=int, default=16, help="voxels added on every side, for room")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    subunit, voxel = read_volume(args.subunit)
    volume = ring(np.pad(subunit, args.pad), voxel, args.fold, args.radius)
    write_volume(args.out, volume, voxel)
    dense = np.argwhere(volume > 0.05 * volume.max()) - np.array(volume.shape) // 2
    reach = np.linalg.norm(dense, axis=1).max()
    print(f"{args.out}: C{args.fold}, box {volume.shape[0]}, reaches {reach:.1f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
