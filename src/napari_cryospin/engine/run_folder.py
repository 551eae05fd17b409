"""Output folders: one run's results per folder, refused or replaced on purpose, and run.json written last.

A run (``reconstruct`` or ``backproject``) first locks its folder (``folder_lock``: one run at a time per
folder), then refuses it if it holds any file a run writes, unless it resumes the run there or was told
to overwrite it; overwriting removes exactly those files (and their temporary files), nothing else, and
never through a symbolic link. ``run.json`` is written after every other output, so its presence marks a
complete run; a resumed run removes it first.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from ..data.safe_write import stale_temporaries, target_of, write_json
from .folder_lock import FolderLock

RUN_RECORD = "run.json"
EPOCHS_DIR = "epochs"
RESULT_FILES = (
    "volume.mrc",
    "half_a.mrc",
    "half_b.mrc",
    "volume_working.mrc",
    "mask.mrc",
    "volume_sharpened.mrc",
    "local_resolution.mrc",
    "poses.star",
    "particles_kept.star",
    "poses_expanded.star",
    "metrics.json",
    "checkpoint.pt",
    "local_refine.npz",
    "doubtful_poses.npz",
    "fsc.png",
    "progress.png",
    "fsc.json",
    "evaluation.json",
    RUN_RECORD,
)
"""Every file a run writes at the top of its folder (``epochs/epoch_NNN.npz`` come on top)."""


class OutputFolderError(ValueError):
    """An output folder that cannot take this run; the message names the folder, the problem and the fix."""


def _ours(path: Path) -> bool:
    """Whether ``path`` (a file in the folder) is a result file or the temporary file of one."""
    name = target_of(path).name
    return name in RESULT_FILES or name == "checkpoint.pt.tmp"


def _is_epoch_record(path: Path) -> bool:
    return path.name.startswith("epoch_") and path.suffix == ".npz"


def _epoch_files(out: Path) -> list[Path]:
    folder = out / EPOCHS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _is_epoch_record(target_of(p)))


def results_in(out: str | os.PathLike) -> list[str]:
    """Names of the run results (and leftover temporary files of them) in ``out``, sorted; [] if none."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = sorted(p.name for p in out.iterdir() if p.is_file() and _ours(p))
    if _epoch_files(out):
        found.append(f"{EPOCHS_DIR}/")
    return found


def remove_results(out: str | os.PathLike) -> None:
    """Delete the run results in ``out`` (see :func:`results_in`) and ``epochs/`` once it is empty.

    Nothing is deleted through a symbolic link: a linked ``epochs`` (or result file) loses the link alone,
    and the files it points to stay where they are.
    """
    out = Path(out)
    if (out / EPOCHS_DIR).is_symlink():
        (out / EPOCHS_DIR).unlink()
    for path in _epoch_files(out):
        path.unlink()
    with contextlib.suppress(OSError):  # kept when it holds files that are not ours
        (out / EPOCHS_DIR).rmdir()
    for path in out.iterdir():
        if path.is_file() and _ours(path):
            path.unlink()


def _writable_folder(out: Path) -> None:
    """Create ``out`` if needed and prove it takes a file; OSErrors name the folder (the funnel explains)."""
    if out.exists() and not out.is_dir():
        raise OutputFolderError(
            f"{out}: is a file, not a folder. Fix: give --out a folder (a new or empty one)."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".cryospin-write-test-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(out)) from exc


def prepare_output(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> list[str]:
    """Make ``out`` ready for a run, before any work: writable, and holding no other run's results.

    Without ``resume`` or ``overwrite`` a folder with results is refused (OutputFolderError); with
    ``overwrite`` they are removed. Returns the results found there (kept when resuming).
    """
    out = Path(out)
    _writable_folder(out)
    found = results_in(out)
    if found and not resume:
        if not overwrite:
            shown = ", ".join(found[:4]) + (", …" if len(found) > 4 else "")
            raise OutputFolderError(
                f"{out}: holds the results of another run ({shown}). Fix: choose a new --out, add "
                f"--resume to continue that run, or --overwrite to replace its results."
            )
        remove_results(out)
    return found


def claim_output(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> FolderLock:
    """Lock ``out`` for this run (one run per folder), then :func:`prepare_output` it under the lock.

    Nothing in the folder is read or removed before the lock is held (a second run is refused with
    ``FolderInUseError``). Returns the lock: release it when the run ends; it is let go on any error here.
    """
    out = Path(out)
    _writable_folder(out)
    lock = FolderLock(out)
    try:
        prepare_output(out, resume=resume, overwrite=overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def begin_resume(out: str | os.PathLike) -> None:
    """Mark a resumed run as incomplete (its run.json goes until the run writes a new one), and remove
    the temporary files of a writer that was killed mid-write (their targets are rewritten by the run)."""
    (Path(out) / RUN_RECORD).unlink(missing_ok=True)
    for path in stale_temporaries(out):
        path.unlink(missing_ok=True)


def write_run_record(out: str | os.PathLike, command: str, settings: dict, identity: dict) -> Path:
    """Write ``run.json`` (what ran, when, the package version, the input's identity); call it last."""
    from .. import __version__

    out = Path(out)
    record = {
        "command": f"cryospin {command}",
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": __version__,
        "input": identity,
        "settings": settings,
        "outputs": [name for name in results_in(out) if name != RUN_RECORD],
    }
    write_json(out / RUN_RECORD, record, indent=1)
    return out / RUN_RECORD
