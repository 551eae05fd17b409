"""`load_particles`, which picks the reader for a file, and the rule that each image is used once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .box_scale import rescale
from .cryosparc import read_cs
from .downsample import ParticleStack
from .errors import ParticleFileError
from .mrc import open_stack
from .particle_set import ParticleSet
from .star import read_star

log = logging.getLogger(__name__)


def drop_repeated_images(particles: ParticleSet) -> ParticleSet:
    """Each image once (its first row), with one warning naming how many rows repeated one and an example.

    A particle listed twice is no more data: with a copy in each half map, the halves would agree on its
    noise and the FSC would report a resolution the data do not have.
    """
    keys = particles.image_keys()
    _, first = np.unique(keys, return_index=True)
    if len(first) == len(keys):
        return particles
    keep = np.sort(first)
    repeat = int(np.flatnonzero(~np.isin(np.arange(len(keys)), keep))[0])
    original = int(np.flatnonzero(keys == keys[repeat])[0])
    unique = particles.subset(keep)
    unique.repeats_dropped = len(keys) - len(keep)
    log.warning(
        "%s: %d of %d rows repeat an image listed earlier (e.g. row %d, %s, as row %d); each image is used "
        "once (its first row): %d particle%s, and a run's poses.star lists only those rows.",
        particles.path.name,
        unique.repeats_dropped,
        len(keys),
        repeat + 1,
        particles.image_name(repeat),
        original + 1,
        len(unique),
        "s" * (len(unique) != 1),
    )
    return unique


def _load_bare_stack(path: Path, box: int | None) -> ParticleSet:
    mrc = open_stack(path)
    if mrc.pixel_size is None:
        raise ParticleFileError(
            f"{path.name}: the MRC header holds no pixel size and a bare stack has no STAR file to "
            f"give one. Fix: set the pixel size in the header or open a STAR file for this stack."
        )
    stack = ParticleStack([path], np.zeros(len(mrc), np.int64), np.arange(len(mrc)), box=box)
    return ParticleSet(
        path=path,
        stack=stack,
        pixel_size=rescale(mrc.pixel_size, None, stack.original_box, stack.box)[0],
        ctf=None,
        rotations=None,
        shifts=None,
        table=None,
        optics=None,
    )


def load_particles(path: str | os.PathLike, box: int | None = None) -> ParticleSet:
    """Open a RELION .star, cryoSPARC .cs or bare .mrcs/.mrc stack, served at `box` pixels if given.

    The returned pixel size is that of the served images (original pixel size × original box / box).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        particles = drop_repeated_images(read_star(path, box=box))
    elif suffix == ".cs":
        particles = drop_repeated_images(read_cs(path, box=box))
    elif suffix in (".mrcs", ".mrc", ".st"):
        particles = _load_bare_stack(path, box)
    else:
        raise ParticleFileError(
            f"{path.name}: unknown particle file type '{path.suffix}'. Fix: open a RELION .star, a "
            f"cryoSPARC .cs or an .mrcs stack."
        )
    stack = particles.stack
    if stack.stored_box != stack.original_box:
        log.warning(
            "%s: the images are %d pixels (odd); they are used at %d (last row and column left out, pixel "
            "size kept), so maps made from them are %d³.",
            path.name,
            stack.stored_box,
            stack.original_box,
            stack.original_box,
        )
    return particles
