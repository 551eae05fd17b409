"""Data shipped inside the package: a small density map for demos and tests (see README.md here)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUNDLED_BOXES = (64, 32)


def bundled_map_path(box: int = 64) -> Path:
    """Path of the bundled ACE2–RBD map (PDB 7DDO) at box 64 or 32, for simulation without user data."""
    if box not in BUNDLED_BOXES:
        raise ValueError(f"no bundled map of box {box}. Fix: choose one of {BUNDLED_BOXES}.")
    return Path(str(files(__name__).joinpath(f"ace2_rbd_7ddo_box{box}.mrc")))
