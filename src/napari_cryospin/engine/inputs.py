"""The run's input: enough particles for a meaningful map, and its identity for resume checks and run.json."""

from __future__ import annotations

import hashlib

import numpy as np

from ..data.errors import ParticleFileError

MIN_PARTICLES = 100
"""Fewest particles a reconstruction accepts.

The gold-standard FSC splits the particles into two half maps; the coarsest exploration grid has 48 view
directions (HEALPix nside 2). Below about 2 × 48 images a half map cannot hold one image per view
direction, so parts of Fourier space stay empty and the FSC (hence the reported resolution) means nothing.
"""

FINGERPRINT_IMAGES = 8
"""Images hashed into the input fingerprint: cheap on any stack, yet another file almost surely differs."""


def check_enough_particles(particles, limited: bool = False) -> None:
    """Raise ParticleFileError (one line: file, count, minimum, fix) when ``particles`` are too few."""
    n = len(particles)
    if n >= MIN_PARTICLES:
        return
    fix = "raise --max-particles" if limited else "use a file with more particles"
    repeated = f" ({particles.repeats_dropped} rows repeated an image)" if particles.repeats_dropped else ""
    raise ParticleFileError(
        f"{particles.path}: {n} particle{'s' * (n != 1)}{repeated}, but a meaningful map needs at least "
        f"{MIN_PARTICLES} (two half maps of ≥ 50 images). Fix: {fix}."
    )


def fingerprint(particles) -> str:
    """A short hash of a few evenly spaced images (as served), their defocus, the count and pixel size."""
    n = len(particles)
    pick = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_IMAGES)).round().astype(np.int64))
    digest = hashlib.sha256(f"{n} {particles.box} {particles.pixel_size:.6g}".encode())
    digest.update(np.ascontiguousarray(particles.stack[pick], dtype=np.float32).tobytes())
    if particles.ctf is not None:
        digest.update(np.asarray(particles.ctf.defocus_u, dtype=np.float64)[pick].tobytes())
    return digest.hexdigest()[:16]


def input_identity(particles) -> dict:
    """What identifies a run's input: file path, particle count, box (pixels), pixel size (Å), fingerprint."""
    return {
        "path": str(particles.path.resolve()),
        "count": len(particles),
        "box": int(particles.box),
        "pixel_size": float(particles.pixel_size),
        "fingerprint": fingerprint(particles),
    }
