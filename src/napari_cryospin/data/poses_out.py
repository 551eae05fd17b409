"""Write poses back as a RELION 3.1 STAR file (optics + particles), keeping the input rows and columns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

from .particle_set import ParticleSet
from .safe_write import replacing

_OPTICS_COLUMNS = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
_PIXEL_COLUMNS = ["rlnImagePixelSize", "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification"]


def _image_names(particles: ParticleSet, out_dir: Path) -> list[str]:
    """`N@stack` names with stack paths relative to `out_dir` (absolute where no relative path exists)."""
    stack = particles.stack
    paths = []
    for file in stack.files:
        try:
            paths.append(os.path.relpath(file.resolve(), out_dir))
        except ValueError:
            paths.append(str(file.resolve()))
    return [f"{i + 1:06d}@{paths[f]}" for f, i in zip(stack.file_index, stack.image_index, strict=True)]


def _base_tables(particles: ParticleSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Particle and optics tables in RELION 3.1 layout, built from the input where it had them."""
    table = (
        particles.table.copy().reset_index(drop=True)
        if particles.table is not None
        else pd.DataFrame(index=range(len(particles)))
    )
    if particles.optics is not None:
        return table, particles.optics.copy()
    ctf = particles.ctf
    if ctf is None:
        keys = pd.DataFrame({c: np.zeros(len(particles)) for c in _OPTICS_COLUMNS})
    else:
        keys = pd.DataFrame(
            dict(zip(_OPTICS_COLUMNS, [ctf.voltage, ctf.cs, ctf.amplitude_contrast], strict=True))
        )
    groups = keys.drop_duplicates().reset_index(drop=True)
    optics = groups.assign(
        rlnOpticsGroup=np.arange(1, len(groups) + 1),
        rlnOpticsGroupName=[f"opticsGroup{i}" for i in range(1, len(groups) + 1)],
        rlnImagePixelSize=particles.original_pixel_size,
        rlnImageSize=particles.stack.stored_box,
        rlnImageDimensionality=2,
    )
    group_of = keys.merge(optics, on=_OPTICS_COLUMNS, how="left")["rlnOpticsGroup"].to_numpy()
    table = table.drop(columns=[c for c in _OPTICS_COLUMNS + _PIXEL_COLUMNS if c in table.columns])
    table["rlnOpticsGroup"] = group_of
    if ctf is not None:
        for column, values in (
            ("rlnDefocusU", ctf.defocus_u),
            ("rlnDefocusV", ctf.defocus_v),
            ("rlnDefocusAngle", ctf.defocus_angle),
            ("rlnPhaseShift", ctf.phase_shift),
            ("rlnCtfBfactor", ctf.bfactor),
        ):
            table[column] = values
    return table, optics


def write_poses_star(
    path: str | os.PathLike,
    particles: ParticleSet,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    extra_columns: dict[str, np.ndarray] | None = None,
) -> None:
    """Write `particles` with poses to a RELION 3.1 STAR, in input row order, atomically.

    `rotations` (n, 3, 3) follow the project convention; `shifts_px` (n, 2) are in pixels of the images
    as served (`particles.pixel_size`) with RELION's origin sign. Origins are written in Å, so they are
    right for the original (not downsampled) images the STAR points to.
    """
    path = Path(path)
    n = len(particles)
    rotations = np.asarray(rotations, dtype=float)
    shifts_px = np.asarray(shifts_px, dtype=float)
    if rotations.shape != (n, 3, 3) or shifts_px.shape != (n, 2):
        raise ValueError(
            f"expected rotations ({n}, 3, 3) and shifts ({n}, 2), got {rotations.shape} and {shifts_px.shape}"
        )
    table, optics = _base_tables(particles)
    table["rlnImageName"] = _image_names(particles, path.resolve().parent)
    euler = Rotation.from_matrix(rotations).as_euler("ZYZ", degrees=True)
    for k, column in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        table[column] = euler[:, k]
    origins = shifts_px * particles.pixel_size
    table = table.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in table.columns])
    table["rlnOriginXAngst"] = origins[:, 0]
    table["rlnOriginYAngst"] = origins[:, 1]
    for column, values in (extra_columns or {}).items():
        table[column] = np.asarray(values)
    with replacing(path) as tmp:
        starfile.write({"optics": optics, "particles": table}, tmp)
