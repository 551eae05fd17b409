"""Postprocessing of a finished run's full-size half maps, in RELION's order: mask, mask-corrected FSC
(the reported resolution), sharpening, local resolution; and the files it writes beside volume.mrc."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.mrc import write_volume
from .fsc_correction import CorrectedFSC, mask_corrected_fsc
from .local_resolution import local_resolution
from .mask import auto_mask
from .sharpen import GuinierFit, sharpen

MASK, SHARPENED, LOCAL_RESOLUTION = "mask.mrc", "volume_sharpened.mrc", "local_resolution.mrc"
"""The files postprocessing writes into the run folder."""


@dataclass
class Postprocessed:
    """The maps (D, D, D float32) and numbers postprocessing made from two half maps."""

    mask: np.ndarray
    sharpened: np.ndarray
    local_resolution: np.ndarray  # Å
    fsc: CorrectedFSC
    guinier: GuinierFit
    info: dict  # how the mask and the local resolution were made

    @property
    def resolution(self) -> float:
        """Å at the mask-corrected FSC 0.143."""
        return self.fsc.resolution

    def to_dict(self) -> dict:
        """metrics.json's ``final.postprocess``."""
        return {
            "resolution": self.resolution,
            "randomised_from_shell": self.fsc.randomised_from,
            "guinier": self.guinier.to_dict(),
            **self.info,
        }


def postprocess(
    full: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, voxel: float, seed: int = 0
) -> Postprocessed:
    """Mask, corrected FSC, sharpened map and local resolution of a run's maps (D, D, D; ``voxel`` Å)."""
    mask, mask_info = auto_mask(full, half_a, half_b, voxel)
    curves = mask_corrected_fsc(half_a, half_b, mask, voxel, seed)
    sharpened, fit = sharpen(full, voxel, curves.resolution, curves.corrected, mask)
    local, local_info = local_resolution(half_a, half_b, mask, voxel, curves.resolution)
    return Postprocessed(
        mask, sharpened, local, curves, fit, {"mask": mask_info, "local_resolution": local_info}
    )


def write_postprocessed(out: Path, post: Postprocessed, voxel: float) -> None:
    """Write mask.mrc, volume_sharpened.mrc and local_resolution.mrc (Å) into ``out``."""
    write_volume(Path(out) / MASK, post.mask, voxel)
    write_volume(Path(out) / SHARPENED, post.sharpened, voxel)
    write_volume(Path(out) / LOCAL_RESOLUTION, post.local_resolution, voxel)
