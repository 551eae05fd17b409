"""npe2 writer: an Image layer to an MRC file carrying its voxel size (taken from the layer's scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.mrc import write_volume


def write_mrc(path: str, data: np.ndarray, meta: dict) -> list[str]:
    """Write one Image layer as MRC; the voxel size is the layer's scale along x (Å)."""
    scale = meta.get("scale")
    voxel = float(scale[-1]) if scale is not None and len(scale) else 1.0
    target = Path(path)
    if target.suffix.lower() != ".mrc":
        target = target.with_suffix(".mrc")
    write_volume(target, np.asarray(data, dtype=np.float32), voxel)
    return [str(target)]
