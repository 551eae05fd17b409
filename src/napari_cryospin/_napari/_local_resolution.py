"""The run map's iso-surface coloured by local resolution (local_resolution.mrc, Å), as a Surface layer:
scikit-image's marching cubes (a napari dependency) at the map's iso level, each vertex given the local
resolution there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..data.mrc import read_volume
from ..postprocess.pipeline import LOCAL_RESOLUTION

COLORMAP = "turbo"
"""Blue (fine) to red (coarse), as local-resolution maps are usually shown."""


def local_resolution_surface(
    volume: np.ndarray, local_resolution: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (V, 3) in voxels [z, y, x], faces (F, 3), local resolution at each vertex (V,) Å) of the
    surface where ``volume`` (D, D, D) crosses ``level``; ``local_resolution`` is (D, D, D), Å."""
    from skimage.measure import marching_cubes

    verts, faces, _normals, _values = marching_cubes(np.asarray(volume, np.float32), level)
    values = ndimage.map_coordinates(local_resolution.astype(np.float32), verts.T, order=1, mode="nearest")
    return verts.astype(np.float32), faces.astype(np.int64), values.astype(np.float32)


def local_resolution_layer(folder: Path, volume: np.ndarray, voxel: float, level: float, meta: dict):
    """The Surface layer data of a run folder's map coloured by its local_resolution.mrc; None without
    that file, with a map of another shape, or when the map never reaches ``level``."""
    path = Path(folder) / LOCAL_RESOLUTION
    if not path.exists():
        return None
    local, _ = read_volume(path)
    if local.shape != volume.shape or not volume.min() < level < volume.max():
        return None
    verts, faces, values = local_resolution_surface(volume, local, level)
    low, high = np.percentile(values, [2, 98])
    return (
        (verts, faces, values),
        {
            "name": "run map, local resolution (Å)",
            "scale": (voxel,) * 3,
            "colormap": COLORMAP,
            "contrast_limits": (float(low), float(max(high, low + 0.1))),
            "metadata": meta,
        },
        "surface",
    )
