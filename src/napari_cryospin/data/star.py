"""RELION STAR 3.0 and 3.1 particle files → `ParticleSet` (CTF, optional poses, lazy image stack)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

from .box_scale import rescale
from .checks import check_values
from .downsample import ParticleStack
from .errors import ParticleFileError
from .particle_set import CTFParams, ParticleSet
from .stack_paths import find_stacks

log = logging.getLogger(__name__)

_FIX_REEXPORT = "Fix: re-export the particles from RELION or cryoSPARC (csparc2star)"
_CTF_COLUMNS = {
    "rlnDefocusU": "defocus_u",
    "rlnDefocusV": "defocus_v",
    "rlnDefocusAngle": "defocus_angle",
    "rlnVoltage": "voltage",
    "rlnSphericalAberration": "cs",
    "rlnAmplitudeContrast": "amplitude_contrast",
    "rlnPhaseShift": "phase_shift",
    "rlnCtfBfactor": "bfactor",
    "rlnImagePixelSize": "pixel_size",
    "rlnPixelSize": "pixel_size",
    "rlnDetectorPixelSize": "pixel_size",
    "rlnMagnification": "pixel_size",
}
"""STAR columns checked with the rules of ``checks.RULES`` (the key names the quantity)."""


def _read_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The particle table and, for STAR 3.1, the optics table."""
    if not path.is_file():
        raise ParticleFileError(f"{path}: STAR file not found. Fix: check the path.")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise ParticleFileError(f"{path.name}: not a readable STAR file ({exc}). {_FIX_REEXPORT}.") from exc
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    particles = tables.get("particles")
    if particles is None:
        particles = next((t for t in tables.values() if "rlnImageName" in t.columns), None)
    if particles is None:
        found = ", ".join(f"data_{k}" for k in blocks) or "none"
        raise ParticleFileError(
            f"{path.name}: no table with an rlnImageName column (tables found: {found}). "
            f"{_FIX_REEXPORT}, with image names."
        )
    if "rlnImageName" not in particles.columns:
        raise ParticleFileError(
            f"{path.name}: the data_particles table has no rlnImageName column. {_FIX_REEXPORT}."
        )
    if len(particles) == 0:
        raise ParticleFileError(
            f"{path.name}: the particle table is empty. Fix: choose a STAR file that lists particles."
        )
    return particles.reset_index(drop=True), tables.get("optics")


def _merge_optics(path: Path, particles: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
    """Particle columns plus, for each particle, the columns of its optics group."""
    if optics is None:
        return particles
    if "rlnOpticsGroup" not in particles.columns or "rlnOpticsGroup" not in optics.columns:
        raise ParticleFileError(
            f"{path.name}: has a data_optics table but no rlnOpticsGroup column linking particles "
            f"to it. {_FIX_REEXPORT}."
        )
    for column, quantity in _CTF_COLUMNS.items():
        if column in optics.columns:
            _numbers(path, optics[column], quantity, column, "data_optics ")
    groups = optics["rlnOpticsGroup"]
    if groups.duplicated().any():
        row = int(np.flatnonzero(groups.duplicated().to_numpy())[0])
        raise ParticleFileError(
            f"{path.name}: data_optics row {row + 1}, column rlnOpticsGroup: group {groups.iloc[row]} is "
            f"defined twice. Fix: give each optics group one row with a unique number."
        )
    by_group = optics.set_index("rlnOpticsGroup")
    missing = sorted(set(particles["rlnOpticsGroup"]) - set(by_group.index))
    if missing:
        raise ParticleFileError(
            f"{path.name}: particles refer to optics group(s) {missing[:5]} that data_optics does "
            f"not define. Fix: add the group(s) to data_optics or correct rlnOpticsGroup."
        )
    merged = particles.copy()
    for column in by_group.columns:
        if column not in merged.columns:
            merged[column] = by_group[column].reindex(particles["rlnOpticsGroup"]).to_numpy()
    return merged


def _image_refs(path: Path, names: pd.Series) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Split `N@stack` names into resolved stack files, a file number and a 0-based image per row."""
    split = names.astype(str).str.split("@", n=1, expand=True)
    if split.shape[1] != 2 or split[1].isna().any():
        row = int(np.flatnonzero(split[1].isna())[0]) if split.shape[1] == 2 else 0
        raise ParticleFileError(
            f"{path.name}: row {row + 1}: rlnImageName '{names.iloc[row]}' is not of the form "
            f"N@stack.mrcs. Fix: write image names as image-number@stack-path."
        )
    numbers = pd.to_numeric(split[0], errors="coerce")
    if numbers.isna().any():
        row = int(np.flatnonzero(numbers.isna())[0])
        raise ParticleFileError(
            f"{path.name}: row {row + 1}: rlnImageName '{names.iloc[row]}' does not start with an "
            f"image number. Fix: write image names as image-number@stack-path."
        )
    stack_names, file_index = np.unique(split[1].to_numpy(), return_inverse=True)
    files = find_stacks(stack_names, path)
    return files, file_index, numbers.to_numpy(np.int64) - 1


def _pixel_size(path: Path, table: pd.DataFrame, stack: ParticleStack) -> float:
    """Pixel size (Å) of the stored images, from the STAR columns or else the first stack's header.

    Optics groups with different pixel sizes are refused: the engine works on one pixel grid, and
    resampling a group onto another's grid is exact only when box × pixel-size ratios are even integers
    (and would change its noise spectrum), so the user rescales at extraction, where it is done right.
    """
    if "rlnImagePixelSize" in table.columns:
        column = "rlnImagePixelSize"
        sizes = _numbers(path, table[column], "pixel_size", column)
    elif "rlnPixelSize" in table.columns:
        column = "rlnPixelSize"
        sizes = _numbers(path, table[column], "pixel_size", column)
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
        column = "rlnDetectorPixelSize/rlnMagnification"
        detector = _numbers(path, table["rlnDetectorPixelSize"], "pixel_size", "rlnDetectorPixelSize")
        sizes = detector * 1e4 / _numbers(path, table["rlnMagnification"], "pixel_size", "rlnMagnification")
    else:
        header = stack.stack(0).pixel_size
        if header is None:
            raise ParticleFileError(
                f"{path.name}: no pixel size: none of rlnImagePixelSize, rlnPixelSize or "
                f"rlnDetectorPixelSize+rlnMagnification, and the header of {stack.files[0].name} "
                f"has none. Fix: add rlnImagePixelSize (Å) to data_optics."
            )
        return header
    if np.ptp(sizes) > 1e-4 * sizes.max():
        first, other = 0, int(np.argmax(np.abs(sizes - sizes[0])))
        groups = ""
        if "rlnOpticsGroup" in table.columns:
            ids = table["rlnOpticsGroup"].to_numpy()
            groups = f" (optics groups {ids[first]} and {ids[other]})"
        raise ParticleFileError(
            f"{path.name}: particles have different pixel sizes{groups}: {sizes[first]:g} and "
            f"{sizes[other]:g} Å in {column}, rows {first + 1} and {other + 1}. Fix: re-extract (or "
            f"rescale, e.g. RELION Extract with rescaling) all particles to one pixel size and box, or "
            f"open each optics group alone."
        )
    size, header = float(sizes[0]), stack.stack(0).pixel_size
    if header is not None and abs(header - size) > 0.01 * size:  # said once per file read
        log.warning(
            "%s: pixel size %g Å in %s, but %g Å in the header of %s; using %g Å, the STAR file's (as "
            "RELION does). If the header is right, correct %s in %s.",
            *(path.name, size, column, header, stack.files[0].name, size, column, path.name),
        )
    return size


def _numbers(path: Path, series: pd.Series, quantity: str, name: str, table: str = "") -> np.ndarray:
    """A STAR column as floats, checked with the rule for ``quantity`` (one-line error on a bad row)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(float)
    return check_values(path, values, quantity, name, table)


def _column(path: Path, table: pd.DataFrame, name: str, default: float | np.ndarray | None) -> np.ndarray:
    """Column ``name`` as checked floats (rules of ``_CTF_COLUMNS``, else finite), or ``default``."""
    if name in table.columns:
        return _numbers(path, table[name], _CTF_COLUMNS.get(name, "number"), name)
    if default is None:
        raise ParticleFileError(
            f"{path.name}: missing column {name}, needed for the CTF. Fix: add {name} to the "
            f"particle or optics table (run CTF estimation and re-export the particles)."
        )
    return np.broadcast_to(np.asarray(default, dtype=float), (len(table),)).copy()


def ctf_from_table(path: Path, table: pd.DataFrame) -> CTFParams:
    """CTF parameters from RELION columns (optics already merged); required ones raise when absent."""
    defocus_u = _column(path, table, "rlnDefocusU", None)
    return CTFParams(
        defocus_u=defocus_u,
        defocus_v=_column(path, table, "rlnDefocusV", defocus_u),
        defocus_angle=_column(path, table, "rlnDefocusAngle", 0.0),
        voltage=_column(path, table, "rlnVoltage", None),
        cs=_column(path, table, "rlnSphericalAberration", None),
        amplitude_contrast=_column(path, table, "rlnAmplitudeContrast", None),
        phase_shift=_column(path, table, "rlnPhaseShift", 0.0),
        bfactor=_column(path, table, "rlnCtfBfactor", 0.0),
    )


def _poses(path: Path, table: pd.DataFrame, pixel_size: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """R = Rz(rot)·Ry(tilt)·Rz(psi) and origins in pixels of size `pixel_size`, when angles exist."""
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    if not set(angles) <= set(table.columns):
        return None, None
    euler = np.stack([_column(path, table, a, None) for a in angles], axis=1)
    rotations = Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix()
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(table.columns):
        shifts = (
            np.stack([_column(path, table, c, None) for c in ("rlnOriginXAngst", "rlnOriginYAngst")], axis=1)
            / pixel_size
        )
    elif {"rlnOriginX", "rlnOriginY"} <= set(table.columns):
        shifts = np.stack([_column(path, table, c, None) for c in ("rlnOriginX", "rlnOriginY")], 1)
    else:
        shifts = np.zeros((len(table), 2))
    return rotations, shifts


def read_star(path: str | os.PathLike, box: int | None = None) -> ParticleSet:
    """Read a RELION 3.0 or 3.1 particle STAR file; images are served at `box` pixels when given."""
    path = Path(path)
    particles, optics = _read_tables(path)
    table = _merge_optics(path, particles, optics)
    ctf = ctf_from_table(path, table)
    files, file_index, image_index = _image_refs(path, particles["rlnImageName"])
    stack = ParticleStack(files, file_index, image_index, box=box, source=path)
    original_pixel = _pixel_size(path, table, stack)
    rotations, original_shifts = _poses(path, table, original_pixel)
    pixel_size, shifts = rescale(original_pixel, original_shifts, stack.original_box, stack.box)
    return ParticleSet(
        path=path,
        stack=stack,
        pixel_size=pixel_size,
        ctf=ctf,
        rotations=rotations,
        shifts=shifts,
        table=particles,
        optics=optics,
    )
