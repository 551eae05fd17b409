"""npe2 sample data: the bundled ACE2–RBD map, and a small particle set simulated from it (cached)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..resources import bundled_map_path
from ._reader import read_particles_layer, read_volume_layer

SAMPLE_PARTICLES = 400
SAMPLE_DIR = Path(tempfile.gettempdir()) / "napari-cryospin-sample"


def bundled_map() -> list[tuple]:
    """The bundled ACE2–RBD map (PDB 7DDO, box 64) as a 3D Image layer."""
    layers = read_volume_layer(bundled_map_path(64))
    layers[0][1]["name"] = "ACE2-RBD map (7DDO)"
    return layers


def simulated_particle_dir(folder: Path = SAMPLE_DIR, n: int = SAMPLE_PARTICLES) -> Path:
    """A folder with particles.star/.mrcs simulated from the bundled map (made once, then reused)."""
    if (folder / "particles.star").is_file():
        return folder
    from ..data.mrc import read_volume
    from ..simulation import simulate_to_dir

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
