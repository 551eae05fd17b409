"""A run folder's results read back for browsing (no torch): maps, FSC, history and the particle table.

Everything comes from files the engine writes (volume.mrc, half maps, metrics.json, poses.star,
epochs/*.npz). The particle table keeps every numeric column poses.star has beyond RELION's pose and
CTF columns (the engine's per-particle scores, or a junk score another tool added), so it needs none.
A selection of rows exports as a RELION 3.1 STAR whose image paths still point at the stacks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

from ..data.errors import ParticleFileError
from ..data.mrc import read_volume
from ..safe_write import replacing

HEAD_COLUMN, LOSS_COLUMN, CONFIDENCE_COLUMN = "cryospinHead", "cryospinLoss", "cryospinConfidence"
"""poses.star columns the engine adds (``particle_scores.py``): winning head (0-based), loss, confidence."""
POSE_CHANGE = "pose change (°)"
"""Table column: each particle's rotation change between the last two saved epochs, in degrees."""

_RELION_COLUMNS = {
    "rlnOpticsGroup",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnCtfBfactor",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnCtfScalefactor",
    "rlnRandomSubset",
    "rlnGroupNumber",
}
_NAMES = {HEAD_COLUMN: "head", LOSS_COLUMN: "loss", CONFIDENCE_COLUMN: "confidence"}
FSC_CURVE_LABELS = {
    "unmasked": "unmasked",
    "sphere": "spherical mask",
    "masked": "masked",
    "masked_randomised": "masked, phases randomised",
    "corrected": "mask-corrected",
}
"""metrics.json ``final.fsc_curves`` keys (FSC of the full-size half maps) and how plots label them."""


def labelled_curves(fsc_curves: dict | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metrics.json's ``final.fsc_curves`` ({"frequency": 1/Å, key: FSC per shell}) as
    {label: (frequency, FSC)}, in :data:`FSC_CURVE_LABELS`' order."""
    if not fsc_curves or "frequency" not in fsc_curves:
        return {}
    freq = np.asarray(fsc_curves["frequency"], dtype=float)
    return {
        label: (freq, np.asarray(fsc_curves[key], dtype=float))
        for key, label in FSC_CURVE_LABELS.items()
        if fsc_curves.get(key) is not None
    }


@dataclass
class RunResults:
    """What a run folder holds; maps are (D, D, D) float32 in Å voxels of ``voxel_size``."""

    folder: Path
    volume: np.ndarray | None
    voxel_size: float
    half_maps: tuple[np.ndarray, np.ndarray] | None
    history: list[dict] = field(default_factory=list)
    fsc: tuple[np.ndarray, np.ndarray] | None = None  # (frequency 1/Å, FSC) of the final half maps
    fsc_curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # by label
    resolution: float | None = None  # Å at FSC 0.143
    poses: pd.DataFrame | None = None  # poses.star's particle rows as written
    optics: pd.DataFrame | None = None
    table: pd.DataFrame | None = None  # one row per particle: "particle" then the plottable scores
    heads: int = 0
    finished: bool = False  # run.json present: the run ended and wrote everything
    has_checkpoint: bool = False

    def summary(self) -> str:
        """One line: the folder, particle count, resolution and whether it finished."""
        n = 0 if self.table is None else len(self.table)
        res = f", {self.resolution:.1f} Å (half-map FSC 0.143)" if self.resolution else ""
        state = "finished" if self.finished else "unfinished (no run.json)"
        return f"{self.folder.name}: {n} particles{res}, {state}"


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a run's map, poses or checkpoint."""
    path = Path(path)
    names = ("volume.mrc", "poses.star", "checkpoint.pt")
    return path.is_dir() and any((path / name).exists() for name in names)


def _last_epoch_npz(folder: Path, count: int) -> list[Path]:
    return sorted((folder / "epochs").glob("epoch_*.npz"))[-count:]


def pose_change_deg(folder: Path) -> np.ndarray | None:
    """Each particle's rotation change (n,) in degrees between the last two saved epochs (None: < 2)."""
    files = _last_epoch_npz(folder, 2)
    if len(files) < 2:
        return None
    rots = []
    for file in files:
        with np.load(file) as saved:
            rots.append(saved["rotations"].astype(np.float64))
    if rots[0].shape != rots[1].shape:
        return None
    cos = (np.einsum("nij,nij->n", rots[0], rots[1]) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _scores(poses: pd.DataFrame) -> pd.DataFrame:
    """The plottable per-particle columns of poses.star, the engine's renamed (head 1-based)."""
    table = pd.DataFrame({"particle": np.arange(len(poses))})
    for column in poses.columns:
        if column in _RELION_COLUMNS or not pd.api.types.is_numeric_dtype(poses[column]):
            continue
        name = _NAMES.get(column, column.removeprefix("rln"))
        values = poses[column].to_numpy()
        table[name] = values + 1 if column == HEAD_COLUMN else values
    return table


def read_run(folder: str | os.PathLike) -> RunResults:
    """Read a run folder; ParticleFileError (one line naming the file and the fix) when it is not one."""
    folder = Path(folder)
    if not is_run_folder(folder):
        raise ParticleFileError(
            f"{folder}: not a cryoSPIN run folder (no volume.mrc, poses.star or checkpoint.pt). "
            "Fix: choose the folder given as --out (or the dock's output folder)."
        )
    volume, voxel, halves = None, 1.0, None
    if (folder / "volume.mrc").exists():
        volume, voxel = read_volume(folder / "volume.mrc")
    elif files := _last_epoch_npz(folder, 1):
        with np.load(files[0]) as saved:
            volume, voxel = saved["volume"], float(saved["voxel_size"])
    if (folder / "half_a.mrc").exists() and (folder / "half_b.mrc").exists():
        halves = (read_volume(folder / "half_a.mrc")[0], read_volume(folder / "half_b.mrc")[0])
    results = RunResults(folder, volume, voxel, halves)
    metrics_path = folder / "metrics.json"
    if metrics_path.exists():
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError as exc:
            raise ParticleFileError(
                f"{metrics_path}: not valid JSON ({exc}). Fix: restore it, or run again with --overwrite."
            ) from exc
        results.history = metrics.get("epochs", [])
        results.heads = int(metrics.get("config", {}).get("heads", 0))
        final = metrics.get("final") or {}
        if final.get("fsc"):
            results.fsc = (np.asarray(final["fsc"][0]), np.asarray(final["fsc"][1]))
            results.resolution = final.get("resolution")
        results.fsc_curves = labelled_curves(final.get("fsc_curves"))
    if (folder / "poses.star").exists():
        try:
            blocks = starfile.read(folder / "poses.star", always_dict=True)
        except Exception as exc:  # a damaged file is the file's problem: one line
            raise ParticleFileError(
                f"{folder / 'poses.star'}: not a readable STAR file ({exc}). Fix: run again with --overwrite."
            ) from exc
        results.poses, results.optics = blocks.get("particles"), blocks.get("optics")
        if results.poses is None:
            raise ParticleFileError(
                f"{folder / 'poses.star'}: no data_particles table. Fix: run again with --overwrite."
            )
        results.table = _scores(results.poses)
        change = pose_change_deg(folder)
        if change is not None and len(change) == len(results.table):
            results.table[POSE_CHANGE] = change
    results.finished = (folder / "run.json").exists()
    results.has_checkpoint = (folder / "checkpoint.pt").exists()
    return results


def pose_rotations(poses: pd.DataFrame) -> np.ndarray:
    """Rotations (n, 3, 3) of the STAR Euler angles (RELION ZYZ, CONVENTIONS)."""
    angles = poses[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=float)
    return Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()


def _moved_image_names(names: pd.Series, source_dir: Path, target_dir: Path) -> list[str]:
    """``N@stack`` names relative to ``source_dir`` rewritten relative to ``target_dir``."""
    out = []
    for name in names:
        number, _, stack = str(name).partition("@")
        path = Path(stack) if Path(stack).is_absolute() else (source_dir / stack)
        try:
            stack = os.path.relpath(os.path.normpath(path), target_dir)
        except ValueError:  # another drive (Windows): keep it absolute
            stack = os.path.normpath(path)
        out.append(f"{number}@{stack}")
    return out


def export_selection(results: RunResults, rows: np.ndarray, path: str | os.PathLike) -> int:
    """Write the particles ``rows`` (indices into poses.star) as a RELION 3.1 STAR at ``path``; returns
    how many. Poses, CTF, optics and the per-particle scores are kept; image paths follow the new place."""
    path = Path(path)
    if results.poses is None:
        raise ParticleFileError(
            f"{results.folder}: no poses.star to export from. Fix: let the run finish (or Resume it)."
        )
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if not len(rows):
        raise ValueError("no particles selected. Fix: brush a range in a histogram or select table rows.")
    picked = results.poses.iloc[rows].reset_index(drop=True)
    picked["rlnImageName"] = _moved_image_names(picked["rlnImageName"], results.folder, path.resolve().parent)
    blocks = {"particles": picked}
    if results.optics is not None:
        blocks = {"optics": results.optics, "particles": picked}
    with replacing(path) as tmp:
        starfile.write(blocks, tmp)
    return len(rows)
