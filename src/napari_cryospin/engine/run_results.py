"""A run folder's results read back for browsing (no torch): maps, FSC, history and the particle table.

Everything comes from files the engine writes (volume.mrc, half maps, metrics.json, poses.star,
epochs/*.npz). The particle table keeps every numeric column poses.star has beyond RELION's pose and
CTF columns (the engine's per-particle scores, or a junk score another tool added), so it needs none.
A selection of rows exports as a RELION 3.1 STAR whose image paths still point at the stacks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

from ..data.errors import ParticleFileError
from ..data.mrc import read_volume
from ..data.safe_write import replacing

HEAD_COLUMN, LOSS_COLUMN, CONFIDENCE_COLUMN = "cryospinHead", "cryospinLoss", "cryospinConfidence"
"""poses.star columns the engine adds (``particle_scores.py``): winning head (0-based), loss, confidence."""
MATE_MARGIN_COLUMN, MATE_COLUMN = "cryospinMateMargin", "cryospinMate"
"""poses.star columns of the mate check (``mates.py``): the pose's margin (nats) over its best mate, which."""
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
HALF_MAPS = ("half_a.mrc", "half_b.mrc")
_NAMES = {
    HEAD_COLUMN: "head",
    LOSS_COLUMN: "loss",
    CONFIDENCE_COLUMN: "confidence",
    MATE_MARGIN_COLUMN: "mate margin",
    MATE_COLUMN: "mate",
}
FSC_CURVE_LABELS = {
    "unmasked": "unmasked",
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
    resolution: float | None = None  # Å, as reported: mask-corrected FSC 0.143 of the full-size halves
    reliable: bool = True  # the run's verdict: False makes ``resolution`` the halves' agreement only
    poses: pd.DataFrame | None = None  # poses.star's particle rows as written
    optics: pd.DataFrame | None = None
    table: pd.DataFrame | None = None  # one row per particle: "particle" then the plottable scores
    heads: int = 0
    finished: bool = False  # a valid run.json: the run ended and wrote everything
    has_checkpoint: bool = False
    problems: list[str] = field(default_factory=list)  # one line per file that could not be read

    def summary(self) -> str:
        """One line: the folder, particle count, resolution and whether it finished."""
        n = 0 if self.table is None else len(self.table)
        stands = "" if self.reliable else "halves agree to "
        res = f", {stands}{self.resolution:.1f} Å (mask-corrected FSC 0.143)" if self.resolution else ""
        res += "" if self.reliable else ", map NOT reliable"
        state = "finished" if self.finished else "unfinished (no valid run.json)"
        unread = f"; {len(self.problems)} file(s) could not be read (see the warnings)" * bool(self.problems)
        return f"{self.folder.name}: {n} particles{res}, {state}{unread}"


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a run's map, poses or checkpoint."""
    path = Path(path)
    names = ("volume.mrc", "poses.star", "checkpoint.pt")
    return path.is_dir() and any((path / name).exists() for name in names)


def _last_epoch_npz(folder: Path, count: int) -> list[Path]:
    return sorted((folder / "epochs").glob("epoch_*.npz"))[-count:]


def _reason(exc: BaseException) -> str:
    """Why a file could not be read, in a few words (never a library's advice to load it unsafely)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if "allow_pickle" in text or "weights_only" in text:
        return "it holds Python objects, refused for safety"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"no {text}" if isinstance(exc, KeyError) else text


def _attempt(read: Callable[[Path], Any], folder: Path, path: Path, lost: str, problems: list[str]) -> Any:
    """``read(path)``, or None with one line in ``problems`` naming the file and what is shown without it."""
    try:
        return read(path)
    except Exception as exc:  # a damaged file is named, never fatal: the rest of the folder opens
        name = path.relative_to(folder)
        problems.append(f"{name} could not be read ({_reason(exc)}): shown without {lost}")
        return None


def _load_npz(file: Path) -> Any:
    """``np.load`` of an .npz, refusing first a file that is no zip archive (numpy takes it for a pickle)."""
    with open(file, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise ValueError("not a NumPy .npz file")
    return np.load(file)


def _epoch_volume(file: Path) -> tuple[np.ndarray, float]:
    """The map (D, D, D) and voxel size (Å) an epochs/*.npz holds."""
    with _load_npz(file) as saved:
        volume, voxel = saved["volume"], float(saved["voxel_size"])
    if volume.ndim != 3:
        raise ValueError(f"a map of shape {volume.shape}")
    return volume, voxel


def _epoch_rotations(file: Path) -> np.ndarray:
    """The rotations (n, 3, 3) an epochs/*.npz holds."""
    with _load_npz(file) as saved:
        rotations = saved["rotations"].astype(np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"rotations of shape {rotations.shape}, not (n, 3, 3)")
    return rotations


def pose_change_deg(folder: Path, problems: list[str]) -> np.ndarray | None:
    """Each particle's rotation change (n,) in degrees between the last two saved epochs (None: fewer than
    two read); an epoch file that cannot be read is named in ``problems``."""
    files = _last_epoch_npz(folder, 2)
    if len(files) < 2:
        return None
    rots = [_attempt(_epoch_rotations, folder, file, "the pose change", problems) for file in files]
    if any(r is None for r in rots) or rots[0].shape != rots[1].shape:
        return None
    cos = (np.einsum("nij,nij->n", rots[0], rots[1]) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


_METRICS_SHAPE = "expected an object with 'epochs', 'final' (with 'fsc': two lists of numbers) and 'config'"
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: Any, nulls: bool = False) -> bool:
    """Whether ``value`` is a list of numbers (and JSON nulls when ``nulls``)."""
    return isinstance(value, list) and all(_is_number(v) or (nulls and v is None) for v in value)


def _metrics_mismatch(metrics: Any) -> str | None:
    """What in metrics.json's content differs from what the engine writes (None: nothing)."""
    if not isinstance(metrics, dict):
        return f"it holds {_JSON_KINDS.get(type(metrics), 'null')}"
    epochs, final, config = metrics.get("epochs", []), metrics.get("final") or {}, metrics.get("config", {})
    if not isinstance(epochs, list) or not all(isinstance(epoch, dict) for epoch in epochs):
        return "'epochs' is not a list of objects"
    if any(e.get(key) is not None and not _is_number(e[key]) for e in epochs for key in ("wall_s", "loss")):
        return "an epoch's 'wall_s' or 'loss' is not a number"
    heads = config.get("heads", 0) if isinstance(config, dict) else None
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 0:
        return "'config.heads' is not a count"
    if not isinstance(final, dict):
        return "'final' is not an object"
    fsc = final.get("fsc")
    if fsc and not (
        isinstance(fsc, list) and len(fsc) == 2 and all(map(_numbers, fsc)) and len(fsc[0]) == len(fsc[1])
    ):
        return "'final.fsc' is not two lists of numbers of one length"
    if final.get("resolution") is not None and not _is_number(final["resolution"]):
        return "'final.resolution' is not a number"
    curves = final.get("fsc_curves")
    if curves is not None and not (
        isinstance(curves, dict)
        and all(_numbers(v, nulls=True) for v in curves.values() if isinstance(v, (list, dict)))
    ):
        return "'final.fsc_curves' is not lists of numbers"
    return None


def _metrics(path: Path, problems: list[str]) -> dict:
    """metrics.json's content when it has the shape the engine writes, else {} (one line in ``problems``)."""
    without = "shown without metrics"
    try:
        metrics = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # unreadable, or not JSON
        problems.append(f"{path.name} could not be read ({_reason(exc)}): {without}")
        return {}
    mismatch = _metrics_mismatch(metrics)
    if mismatch:
        problems.append(f"{path.name} is not a metrics file ({_METRICS_SHAPE}; {mismatch}): {without}")
        return {}
    return metrics


_RECORD_KEYS = ("command", "finished")


def _finished(path: Path, problems: list[str]) -> bool:
    """Whether ``path`` (run.json, written last) is a run record, so the run finished."""
    if not path.exists():
        return False
    unfinished = "the run is shown as unfinished"
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # unreadable, or not JSON
        problems.append(f"{path.name} could not be read ({_reason(exc)}): {unfinished}")
        return False
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in _RECORD_KEYS):
        expected = f"expected an object with {' and '.join(map(repr, _RECORD_KEYS))}"
        problems.append(f"{path.name} is not a run record ({expected}): {unfinished}")
        return False
    return True


def _particle_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """poses.star's particle and optics tables."""
    blocks = starfile.read(path, always_dict=True)
    if not isinstance(blocks.get("particles"), pd.DataFrame):
        raise ValueError("no data_particles table")
    return blocks["particles"], blocks.get("optics")


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
    """Read a run folder: what can be read, and one line in ``problems`` for each file that cannot;
    ParticleFileError (one line naming the folder and the fix) when it is no run or nothing in it reads."""
    folder = Path(folder)
    if not is_run_folder(folder):
        raise ParticleFileError(
            f"{folder}: not a cryoSPIN run folder (no volume.mrc, poses.star or checkpoint.pt). "
            "Fix: choose the folder given as --out (or the dock's output folder)."
        )
    problems: list[str] = []
    volume, voxel, halves = None, 1.0, None
    if (folder / "volume.mrc").exists():
        read = _attempt(read_volume, folder, folder / "volume.mrc", "the final map", problems)
        volume, voxel = read or (None, 1.0)
    if volume is None and (files := _last_epoch_npz(folder, 1)):
        read = _attempt(_epoch_volume, folder, files[0], "the last epoch's map", problems)
        volume, voxel = read or (None, 1.0)
    if (folder / "half_a.mrc").exists() and (folder / "half_b.mrc").exists():
        pair = [_attempt(read_volume, folder, folder / name, "the half maps", problems) for name in HALF_MAPS]
        halves = None if any(read is None for read in pair) else (pair[0][0], pair[1][0])
    results = RunResults(folder, volume, voxel, halves, problems=problems)
    metrics_path = folder / "metrics.json"
    if metrics_path.exists():
        metrics = _metrics(metrics_path, problems)
        results.history = metrics.get("epochs", [])
        results.heads = int(metrics.get("config", {}).get("heads", 0))
        final = metrics.get("final") or {}
        if final.get("fsc"):
            results.fsc = (np.asarray(final["fsc"][0]), np.asarray(final["fsc"][1]))
            results.resolution = final.get("resolution")
        results.reliable = bool((final.get("validity") or {}).get("reliable", True))
        results.fsc_curves = labelled_curves(final.get("fsc_curves"))
    tables = None
    if (folder / "poses.star").exists():
        tables = _attempt(_particle_tables, folder, folder / "poses.star", "the particle table", problems)
    if tables is not None:
        results.poses, results.optics = tables
        results.table = _scores(results.poses)
        change = pose_change_deg(folder, problems)
        if change is not None and len(change) == len(results.table):
            results.table[POSE_CHANGE] = change
    results.finished = _finished(folder / "run.json", problems)
    results.has_checkpoint = (folder / "checkpoint.pt").exists()
    if results.volume is None and results.table is None and not results.has_checkpoint:
        raise ParticleFileError(
            f"{folder}: nothing in it could be read ({'; '.join(problems)}). "
            "Fix: run again with --overwrite (or choose the folder given as --out)."
        )
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
