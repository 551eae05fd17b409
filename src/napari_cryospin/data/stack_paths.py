"""Where the stacks a metadata file names are: its own folder or the current (project) folder, else a
fallback that is named in a warning, never a guess between two different files.

RELION reads ``rlnImageName`` relative to the project folder (where it runs: the current folder); files
written by this project and stacks copied with their STAR name them relative to the STAR's folder;
cryoSPARC's ``blob/path`` is relative to the project folder, the one above the job folder holding the
``.cs``. These are the *roots*. A relative name with folders (``Extract/job012/x.mrcs``) may also sit
under a parent of the metadata file's folder (a project whose job folder holds the STAR), and any name
may sit beside the metadata file (stacks copied next to it); such a fallback is used only when it finds
one file, and a warning names it. A bare name is never looked up in parent folders: a stack of the same
name there is as likely another data set's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .errors import ParticleFileError

log = logging.getLogger(__name__)


def _distinct_files(candidates: list[Path]) -> list[Path]:
    """The candidates that exist as files, one per file (two spellings of one file count once)."""
    found: dict[tuple[int, int], Path] = {}
    for path in candidates:
        try:
            if path.is_file():
                info = path.stat()
                found.setdefault((info.st_dev, info.st_ino), path)
        except OSError:
            continue
    return list(found.values())


def _candidates(rel: Path, roots: Sequence[Path], folder: Path) -> tuple[list[Path], list[Path]]:
    """(primary, fallback) places for the stack named ``rel``, in the order they are tried."""
    if rel.is_absolute():
        return [rel], [folder / rel.name]
    fallback = [parent / rel for parent in folder.parents] if len(rel.parts) > 1 else []
    if len(rel.parts) > 1:
        fallback.append(folder / rel.name)
    return [root / rel for root in roots], fallback


def _not_taken(name: str, folder: Path) -> str:
    """A note on a stack of bare name ``name`` in a parent folder, which is deliberately not used."""
    if len(Path(name).parts) != 1:
        return ""
    above = next((p / name for p in folder.parents if (p / name).is_file()), None)
    return "" if above is None else f" ({above} is not used: it may be another data set's)"


def find_stacks(names: Sequence[str], source: Path, roots: Sequence[Path] = ()) -> list[Path]:
    """The stack file of each name in ``names`` (as written in the metadata file ``source``).

    ``roots`` are the folders relative names are read from besides ``source``'s own folder and the
    current folder. Raises ``ParticleFileError`` (one line) when a name is not found or names two
    different files; logs one warning listing the stacks found only by a fallback.
    """
    folder = source.resolve().parent
    roots = list(dict.fromkeys([folder, *map(Path, roots), Path.cwd()]))
    files, moved = [], []
    for name in names:
        primary, fallback = _candidates(Path(name), roots, folder)
        for tier, where in ((primary, None), (fallback, "fallback")):
            found = _distinct_files(tier)
            if len(found) > 1:
                raise ParticleFileError(
                    f"{source.name}: '{name}' names two different files: {found[0]} and {found[1]}. Fix: "
                    f"write the stack paths in {source.name} relative to one folder (RELION: the project "
                    f"folder you run from), or absolute."
                )
            if found:
                files.append(found[0])
                if where:
                    moved.append(f"'{name}' → {found[0]}")
                break
        else:
            listing = ", ".join(str(p) for p in dict.fromkeys(primary + fallback)) + _not_taken(name, folder)
            raise ParticleFileError(
                f"{source.name}: particle stack '{name}' not found; tried {listing}. "
                f"Fix: keep the stacks where the metadata file says (relative to its folder or to the "
                f"current folder), or edit the image paths to point at them."
            )
    if moved:
        log.warning(
            "%s: %d stack%s not found where named; using %s%s. Check that %s the right data set.",
            source.name,
            len(moved),
            "s" * (len(moved) != 1),
            moved[0],
            f" and {len(moved) - 1} more found the same way" if len(moved) > 1 else "",
            "it is" if len(moved) == 1 else "they are",
        )
    return files
