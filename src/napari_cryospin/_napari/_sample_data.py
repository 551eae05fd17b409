"""npe2 sample data: the bundled ACE2–RBD map, and a small particle set simulated from it (cached).

The particle set is cached in a folder of this user's own (``<tmp>/napari-cryospin-sample-<uid>``, mode
0o700): a shared, fixed folder would let another user of the machine plant the files we open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from ..resources import bundled_map_path
from ._reader import read_particles_layer, read_volume_layer

log = logging.getLogger(__name__)

SAMPLE_PARTICLES = 400
SAMPLE_NAME = "napari-cryospin-sample"


def bundled_map() -> list[tuple]:
    """The bundled ACE2–RBD map (PDB 7DDO, box 64) as a 3D Image layer."""
    layers = read_volume_layer(bundled_map_path(64))
    layers[0][1]["name"] = "ACE2-RBD map (7DDO)"
    return layers


def _private_folder() -> Path:
    """This user's cache folder in the temporary folder, made with mode 0o700. When its name is taken by
    anything else (another user's folder, a link, a folder others may write to: planted), that is left
    alone and a new private folder (``tempfile.mkdtemp``) is used instead."""
    if not hasattr(os, "getuid"):  # Windows: the temporary folder is the user's own
        return Path(tempfile.gettempdir()) / SAMPLE_NAME
    folder = Path(tempfile.gettempdir()) / f"{SAMPLE_NAME}-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
        return folder
    log.warning("%s is not this user's private folder; the sample data go to a new one", folder)
    return Path(tempfile.mkdtemp(prefix=f"{SAMPLE_NAME}-"))


def simulated_particle_dir(folder: Path | None = None, n: int = SAMPLE_PARTICLES) -> Path:
    """A folder with particles.star/.mrcs simulated from the bundled map (made once, then reused);
    by default ``particles`` in :func:`_private_folder`."""
    folder = folder or _private_folder() / "particles"
    if (folder / "particles.star").is_file():
        return folder
    from ..data.mrc import read_volume
    from ..simulation.simulate import simulate_to_dir

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        volume, voxel = read_volume(bundled_map_path(64))
        simulate_to_dir(volume, voxel, n, staging, box=64, snr=0.1, seed=0)
        if not (folder / "particles.star").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def simulated_particles() -> list[tuple]:
    """A few hundred simulated box-64 particles (with CTF and noise) as a stack layer ready to reconstruct."""
    layers = read_particles_layer(simulated_particle_dir() / "particles.star")
    layers[0][1]["name"] = "simulated particles"
    return layers
