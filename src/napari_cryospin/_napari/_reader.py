"""npe2 readers: MRC maps as 3D volumes, MRC stacks and STAR/.cs particle files as 2D image stacks."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np

from ..data.mrc import open_stack, read_volume
from ..data.particles import load_particles
from ._lazy import LazyStack

LayerData = list[tuple]
PathLike = str | os.PathLike


def _single(path: PathLike | list, suffixes: tuple[str, ...]) -> Path | None:
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    return path if path.suffix.lower() in suffixes else None


def volume_contrast(volume: np.ndarray) -> tuple[float, float]:
    """Contrast limits for a maximum-intensity view: from the 99th percentile to the maximum."""
    sample = np.asarray(volume, dtype=np.float32)[::2, ::2, ::2]
    low, high = float(np.percentile(sample, 99.0)), float(np.max(volume))
    return (low, high) if high > low else (float(np.min(volume)), high + 1e-6)


def image_contrast(images: np.ndarray) -> tuple[float, float]:
    """Robust contrast limits (0.5 and 99.5 percentiles) of a few images."""
    low, high = np.percentile(np.asarray(images, dtype=np.float32), [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _is_image_stack(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            return bool(mrc.is_image_stack()) or (mrc.data is not None and mrc.data.ndim == 2)


def read_volume_layer(path: PathLike) -> LayerData:
    """A 3D map as an Image layer scaled by its voxel size (Å), shown as a maximum-intensity projection."""
    path = Path(path)
    if _is_image_stack(path):
        return read_stack_layer(path)
    volume, voxel = read_volume(path)
    meta = {
        "name": path.stem,
        "scale": (voxel,) * 3,
        "units": "angstrom",
        "rendering": "mip",
        "colormap": "gray",
        "contrast_limits": volume_contrast(volume),
        "metadata": {"path": str(path), "voxel_size": voxel},
    }
    return [(volume, meta, "image")]


def read_stack_layer(path: PathLike) -> LayerData:
    """An MRC image stack, memory-mapped, as a 2D Image layer stepping through particles."""
    path = Path(path)
    stack = open_stack(path)
    pixel = stack.pixel_size or 1.0
    meta = {
        "name": path.stem,
        "scale": (1.0, pixel, pixel),
        "units": "angstrom",  # as the maps' (napari drops units that differ between layers)
        "colormap": "gray",
        "contrast_limits": image_contrast(stack[: min(len(stack), 16)]),
        "metadata": {"particles_path": str(path), "pixel_size": pixel},
    }
    return [(stack.data, meta, "image")]


def read_particles_layer(path: PathLike) -> LayerData:
    """The images a STAR or cryoSPARC file points to, read lazily, with its table in the metadata."""
    path = Path(path)
    particles = load_particles(path)
    images = LazyStack(particles.stack)
    pixel = particles.pixel_size
    meta = {
        "name": path.stem,
        "scale": (1.0, pixel, pixel),
        "units": "angstrom",  # as the maps' (napari drops units that differ between layers)
        "colormap": "gray",
        "contrast_limits": image_contrast(images[: min(len(images), 16)]),
        "metadata": {"particles_path": str(path), "pixel_size": pixel, "table": particles.table},
    }
    return [(images, meta, "image")]


def get_volume_reader(path: PathLike | list) -> Callable[[PathLike], LayerData] | None:
    """Reader for .mrc/.map files (image stacks saved as .mrc open as stacks)."""
    return read_volume_layer if _single(path, (".mrc", ".map")) else None


def get_stack_reader(path: PathLike | list) -> Callable[[PathLike], LayerData] | None:
    """Reader for .mrcs particle stacks."""
    return read_stack_layer if _single(path, (".mrcs",)) else None


def get_particles_reader(path: PathLike | list) -> Callable[[PathLike], LayerData] | None:
    """Reader for RELION .star and cryoSPARC .cs particle files."""
    return read_particles_layer if _single(path, (".star", ".cs")) else None


def read_run_layers(path: PathLike) -> LayerData:
    """A run folder's map (iso-surface), the same surface coloured by local resolution (when the run wrote
    local_resolution.mrc) and half maps (hidden); the folder is in each layer's metadata,
    where the Run explorer dock finds it to show the particles and posteriors. Each file that cannot be
    read is one warning (napari shows it as a notification); the rest opens."""
    from ..engine.run_results import read_run
    from ._local_resolution import local_resolution_layer
    from ._map_display import default_iso_level

    results = read_run(path)
    for problem in results.problems:
        warnings.warn(problem, UserWarning, stacklevel=2)
    meta = {"run_folder": str(results.folder), "voxel_size": results.voxel_size}
    layers: LayerData = []
    if results.volume is not None:
        layers.append(
            (
                results.volume,
                {
                    "name": "run map",
                    "scale": (results.voxel_size,) * 3,
                    "rendering": "iso",
                    "iso_threshold": default_iso_level(results.volume),
                    "colormap": "gray",
                    "metadata": meta,
                },
                "image",
            )
        )
        coloured = local_resolution_layer(
            results.folder, results.volume, results.voxel_size, layers[-1][1]["iso_threshold"], meta
        )
        if coloured is not None:
            layers.append(coloured)
    for name, half in zip(("run half A", "run half B"), results.half_maps or (), strict=False):
        layers.append(
            (
                half,
                {"name": name, "scale": (results.voxel_size,) * 3, "visible": False, "metadata": meta},
                "image",
            )
        )
    return layers


def get_run_reader(path: PathLike | list) -> Callable[[PathLike], LayerData] | None:
    """Reader for a cryoSPIN run folder (holding volume.mrc, poses.star or checkpoint.pt)."""
    from ..engine.run_results import is_run_folder

    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_run_layers if is_run_folder(path) else None
