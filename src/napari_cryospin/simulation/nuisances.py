"""What real particle stacks have and clean simulations lack: the nuisances ``cryospin simulate`` can add.

Coloured noise (detector MTF × ice), junk of two kinds (empty picks / ice blobs, and other particles /
aggregates), RELION polarity and normalisation, a second optics group, a CTF B-factor envelope and a
per-particle intensity scale. :class:`Nuisances` () is the clean default: nothing added. See
docs/simulation.md for the models and their parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PARTICLE, EMPTY, OTHER = 0, 1, 2
"""Junk kinds in ``SimulationResult.junk_kind``; truth.star's rlnClassNumber is the kind + 1."""

ICE_BOOST, ICE_WIDTH = 4.0, 0.05
"""Coloured noise: the ice term adds ``ICE_BOOST · exp(−f² / 2 ICE_WIDTH²)`` (f in cycles/pixel)."""


@dataclass(frozen=True)
class Nuisances:
    """Nuisances to add to a simulation; every default leaves the clean, unchanged behaviour.

    ``bfactor`` (Å²) damps the CTF by ``exp(−B s²/4)``; ``coloured_noise`` shapes the noise spectrum;
    ``junk_fraction`` of the images are junk, half empty picks or ice blobs, half other particles or
    aggregates; ``polarity`` ``"white"`` inverts the images (protein white, RELION's "invert contrast");
    ``normalize`` sets each image's background (outside radius 0.375·box) to mean 0 and sd 1, as
    relion_preprocess does; ``optics2`` = (kV, Cs mm, amplitude contrast) of a second optics group that
    half the particles (at random) belong to; ``intensity_spread`` is the sd of the log of a per-particle
    factor on the signal.
    """

    bfactor: float = 0.0
    coloured_noise: bool = False
    junk_fraction: float = 0.0
    polarity: str = "dark"
    normalize: bool = False
    optics2: tuple[float, float, float] | None = None
    intensity_spread: float = 0.0

    def check(self) -> None:
        """ValueError with a fix for values that cannot be simulated."""
        if not math.isfinite(self.bfactor):
            raise ValueError(f"bfactor must be a finite number of Å², got {self.bfactor}.")
        if not 0 <= self.junk_fraction < 1:
            raise ValueError(f"junk fraction must be in [0, 1), got {self.junk_fraction}.")
        if self.polarity not in ("dark", "white"):
            raise ValueError(f"polarity must be 'dark' or 'white', got {self.polarity!r}.")
        if not 0 <= self.intensity_spread < 2:
            raise ValueError(f"intensity spread must be in [0, 2), got {self.intensity_spread}.")
        if self.optics2 is not None:
            kv, cs, ac = self.optics2
            if not (kv > 0 and cs >= 0 and 0 <= ac < 1):
                raise ValueError(
                    f"second optics group (kV, Cs, amplitude contrast) = {self.optics2} is invalid. "
                    f"Fix: kV > 0, Cs ≥ 0 mm, 0 ≤ amplitude contrast < 1."
                )


def draw_labels(
    n: int, nuisances: Nuisances, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per particle: optics group (1 or 2), junk kind and intensity factor (all (n,)); no draw when off."""
    group = np.ones(n, dtype=np.int64)
    if nuisances.optics2 is not None:
        group[rng.permutation(n)[: n // 2]] = 2
    kind = np.full(n, PARTICLE, dtype=np.int64)
    junk = rng.permutation(n)[: round(nuisances.junk_fraction * n)]
    kind[junk[: len(junk) // 2]] = EMPTY
    kind[junk[len(junk) // 2 :]] = OTHER
    scale = np.ones(n)
    if nuisances.intensity_spread > 0:
        scale = np.exp(rng.normal(0.0, nuisances.intensity_spread, n))
    return group, kind, scale


def noise_filter(box: int) -> np.ndarray:
    """(L, L//2 + 1) amplitude filter for ``rfft2`` of white noise: √(MTF² · ice), mean power 1.

    MTF(f) = sinc(f) (a counting detector, f in cycles/pixel); ice = 1 + ICE_BOOST · exp(−f²/2w²):
    more power at low frequency. Normalised so the filtered noise keeps the white noise's variance.
    """

    def power(fx: np.ndarray) -> np.ndarray:
        f = np.hypot(fx[None, :], np.fft.fftfreq(box)[:, None])
        return np.sinc(f) ** 2 * (1 + ICE_BOOST * np.exp(-(f**2) / (2 * ICE_WIDTH**2)))

    return np.sqrt(power(np.fft.rfftfreq(box)) / power(np.fft.fftfreq(box)).mean())


def colour(noise: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """White noise (k, L, L) shaped by an amplitude filter from :func:`noise_filter`, float32."""
    box = noise.shape[-1]
    return np.fft.irfft2(np.fft.rfft2(noise) * amplitude, s=(box, box)).astype(np.float32)


def normalize_background(images: np.ndarray) -> np.ndarray:
    """Each image minus its background mean, over its background sd (outside radius 0.375·box), in place.

    relion_preprocess's default (background radius 75 % of half the box).
    """
    box = images.shape[-1]
    grid = np.arange(box) - box // 2
    outside = np.hypot(grid[:, None], grid[None, :]) > 0.375 * box
    background = images[:, outside]
    mean = background.mean(axis=1)
    sd = background.std(axis=1)
    sd[sd == 0] = 1.0
    images -= mean[:, None, None].astype(images.dtype)
    images /= sd[:, None, None].astype(images.dtype)
    return images


def ice_images(count: int, box: int, mass: float, rng: np.random.Generator) -> np.ndarray:
    """(count, L, L) empty picks: each nothing (a quarter) or 1–3 Gaussian ice blobs anywhere in the box.

    Blob masses are 0.2–1 × ``mass`` (the particle's), widths (sd) 3–10 % of the box.
    """
    grid = np.arange(box) - box // 2
    out = np.zeros((count, box, box), dtype=np.float32)
    for i in range(count):
        for _ in range(rng.integers(0, 4)):
            cx, cy = rng.uniform(-box / 2, box / 2, 2)
            sd = rng.uniform(0.03, 0.1) * box
            weight = rng.uniform(0.2, 1.0) * mass / (2 * np.pi * sd * sd)
            gx = np.exp(-((grid - cx) ** 2) / (2 * sd * sd))
            gy = np.exp(-((grid - cy) ** 2) / (2 * sd * sd))
            out[i] += np.float32(weight) * (gy[:, None] * gx[None, :]).astype(np.float32)
    return out


def blob_volume(box: int, mass: float, rng: np.random.Generator) -> np.ndarray:
    """(L, L, L) a different, random density of the same total ``mass``: 12 Gaussian balls in radius L/5."""
    grid = np.arange(box) - box // 2
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    volume = np.zeros((box,) * 3)
    for _ in range(12):
        direction = rng.normal(size=3)
        centre = direction / np.linalg.norm(direction) * box / 5 * rng.uniform() ** (1 / 3)
        sd = rng.uniform(box / 20, box / 10)
        r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
        volume += rng.uniform(0.5, 1.0) * np.exp(-r2 / (2 * sd * sd))
    return (volume * mass / volume.sum()).astype(np.float32)
