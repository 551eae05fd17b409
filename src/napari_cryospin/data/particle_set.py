"""The particle data model: per-particle CTF parameters and a set of particles with its lazy stack."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .box_scale import rescale
from .downsample import ParticleStack


@dataclass
class CTFParams:
    """Per-particle CTF parameters, float arrays of shape (n,), in the units RELION writes."""

    defocus_u: np.ndarray  # Å
    defocus_v: np.ndarray  # Å
    defocus_angle: np.ndarray  # degrees
    voltage: np.ndarray  # kV
    cs: np.ndarray  # mm
    amplitude_contrast: np.ndarray
    phase_shift: np.ndarray  # degrees
    bfactor: np.ndarray  # Å²

    def __len__(self) -> int:
        return len(self.defocus_u)

    def subset(self, indices: np.ndarray | slice) -> CTFParams:
        """The parameters of the chosen particles."""
        return CTFParams(**{f.name: getattr(self, f.name)[indices] for f in fields(self)})


@dataclass
class ParticleSet:
    """Particle images with their CTF and, when the file has them, poses (see docs/architecture.md).

    `ctf` is None only for a bare MRC stack, which carries no CTF; the engine decides what to do.
    `shifts` are in pixels of the images as served (`pixel_size`), with RELION's origin sign.
    `repeats_dropped` counts the rows of the file left out because they repeated an image listed earlier.
    """

    path: Path
    stack: ParticleStack
    pixel_size: float
    ctf: CTFParams | None
    rotations: np.ndarray | None
    shifts: np.ndarray | None
    table: pd.DataFrame | None
    optics: pd.DataFrame | None
    repeats_dropped: int = 0

    def __len__(self) -> int:
        return len(self.stack)

    @property
    def box(self) -> int:
        """Side length of the served images, in pixels."""
        return self.stack.box

    @property
    def original_pixel_size(self) -> float:
        """Pixel size in Å of the images as stored in the stacks (before any downsampling)."""
        return rescale(self.pixel_size, None, self.box, self.stack.original_box)[0]

    def at_box(self, box: int) -> ParticleSet:
        """The same particles served at another even ``box`` (Fourier crop on the fly; ≤ the stored box).

        Pixel size and shifts (pixels) follow the new sampling; nothing is read or copied.
        """
        if box == self.box:
            return self
        pixel_size, shifts = rescale(self.pixel_size, self.shifts, self.box, box)
        return ParticleSet(
            path=self.path,
            stack=self.stack.resized(box),
            pixel_size=pixel_size,
            ctf=self.ctf,
            rotations=self.rotations,
            shifts=shifts,
            table=self.table,
            optics=self.optics,
            repeats_dropped=self.repeats_dropped,
        )

    def image_keys(self) -> np.ndarray:
        """One string per particle naming its image: ``index@stack`` with the stack's resolved path."""
        stack = self.stack
        files = [str(f.resolve()) for f in stack.files]
        return np.array(
            [f"{i + 1}@{files[f]}" for f, i in zip(stack.file_index, stack.image_index, strict=True)]
        )

    def image_name(self, row: int) -> str:
        """Particle ``row``'s image as the file wrote it (rlnImageName), else ``index@stack``."""
        if self.table is not None and "rlnImageName" in self.table.columns:
            return str(self.table["rlnImageName"].iloc[row])
        stack = self.stack
        return f"{stack.image_index[row] + 1}@{stack.files[stack.file_index[row]].name}"

    def subset(self, indices: np.ndarray | slice) -> ParticleSet:
        """The chosen particles, in the given order (table rows follow)."""
        pick = np.arange(len(self))[indices]
        return ParticleSet(
            path=self.path,
            stack=self.stack.subset(pick),
            pixel_size=self.pixel_size,
            ctf=None if self.ctf is None else self.ctf.subset(pick),
            rotations=None if self.rotations is None else self.rotations[pick],
            shifts=None if self.shifts is None else self.shifts[pick],
            table=None if self.table is None else self.table.iloc[pick].reset_index(drop=True),
            optics=self.optics,
            repeats_dropped=self.repeats_dropped,
        )
