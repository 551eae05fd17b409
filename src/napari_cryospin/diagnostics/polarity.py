"""Image polarity (dark or white protein) decided from the data, never assumed.

A CTF-weighted (Wiener) backprojection of particles at *random* poses is, on average, the spherical
average of the map filtered by a positive radial weight: with images in the project's convention
(dark protein, model image = CTF · projection, H(0) = −w) its centre is positive; with protein-white
images (RELION's "invert contrast") it is negative. The sign of (mean inside radius box/4) − (mean in a
shell outside) decides, and random subsets of the particles give the evidence (a z-score and the share
that agree). Reading this module needs no GUI; torch is imported only when measuring.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

MODES = ("auto", "dark", "white")
"""``--polarity`` values: decided from the data, or set by the user."""

DETECT_BOX = 32
"""Larger stacks are Fourier-cropped to this box for the measurement (the blob is smooth)."""


@dataclass
class PolarityEvidence:
    """What the random-pose backprojection says about the images' polarity.

    ``detected`` is ``"dark"`` (protein darker than background, the project's convention) or ``"white"``.
    ``contrast`` is (centre mean − shell mean) / map sd of all ``n_particles``; ``z`` is the mean subset
    contrast over its standard error; ``agree`` the share of ``subsets`` with the sign of ``contrast``.
    """

    detected: str
    contrast: float
    z: float
    agree: float
    subsets: int
    n_particles: int


@dataclass
class PolarityChoice:
    """The sign applied to every image (+1 keeps it, −1 inverts it), why, and the data's evidence."""

    mode: str  # "auto", "dark" or "white" (what was asked)
    polarity: str  # "dark" or "white": the polarity the images are treated as having
    sign: float  # +1.0 for dark, −1.0 for white
    evidence: PolarityEvidence | None
    warning: str = ""  # non-empty when the user's choice contradicts confident evidence

    def to_dict(self) -> dict:
        """Plain-JSON form, for metrics.json and fsc.json."""
        return asdict(self)

    def summary(self) -> str:
        """A short phrase for status lines, e.g. ``protein white, inverted (auto, z −54)``."""
        what = "protein dark" if self.polarity == "dark" else "protein white, inverted"
        how = "auto" if self.mode == "auto" else "set by the user"
        if self.evidence is not None:
            how += f", z {self.evidence.z:.0f}"
        text = f"{what} ({how})"
        return f"{text}; warning: {self.warning}" if self.warning else text


def _radial_masks(box: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (D, D, D) masks: centre (r < D/4), shell (0.3 D ≤ r < 0.42 D) and both together."""
    grid = np.arange(box) - box // 2
    r = np.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
    inner = r < box / 4
    shell = (r >= 0.3 * box) & (r < 0.42 * box)
    return inner, shell, r < 0.42 * box


def _contrast(volume: np.ndarray, masks: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    inner, shell, both = masks
    sd = float(volume[both].std()) or 1.0
    return (float(volume[inner].mean()) - float(volume[shell].mean())) / sd


def _small_view(particles: Any, pick: np.ndarray) -> Any:
    """The chosen particles served at most at :data:`DETECT_BOX` pixels (sharing the open stacks)."""
    sub = particles.subset(pick)
    if sub.box <= DETECT_BOX:
        return sub
    stack = sub.stack.resized(DETECT_BOX)
    return replace(sub, stack=stack, pixel_size=sub.pixel_size * sub.box / DETECT_BOX)


def measure_polarity(
    particles: Any, n: int = 1000, subsets: int = 8, seed: int = 0, device: Any = "cpu"
) -> PolarityEvidence:
    """Evidence from up to ``n`` particles (a ``ParticleSet`` with CTF) at seeded random poses.

    The particles' images are taken as served (their stack's current ``sign`` included).
    """
    import torch

    from ..geometry.rotations import random_rotations
    from ..physics.reconstruction import accumulate, solve_map

    rng = np.random.default_rng([seed, 7])
    count = min(len(particles), n)
    pick = np.sort(rng.choice(len(particles), size=count, replace=False))
    view = _small_view(particles, pick)
    generator = torch.Generator().manual_seed(seed)
    rotations = random_rotations(count, generator=generator, dtype=torch.float64).numpy()
    shifts = np.zeros((count, 2))
    groups = np.array_split(rng.permutation(count), min(subsets, count))
    accs = [accumulate(view, rotations, shifts, np.sort(g), device=device) for g in groups if len(g)]
    masks = _radial_masks(view.box)
    total = accs[0]
    for acc in accs[1:]:
        total = total + acc
    contrast = _contrast(solve_map(total), masks)
    parts = np.array([_contrast(solve_map(acc), masks) for acc in accs])
    error = float(parts.std(ddof=1)) / math.sqrt(len(parts)) if len(parts) > 1 else 0.0
    z = float(parts.mean()) / error if error > 0 else 0.0
    return PolarityEvidence(
        detected="dark" if contrast > 0 else "white",
        contrast=contrast,
        z=z,
        agree=float(np.mean(np.sign(parts) == np.sign(contrast))),
        subsets=len(parts),
        n_particles=count,
    )


def choose_polarity(particles: Any, mode: str = "auto", seed: int = 0, device: Any = "cpu") -> PolarityChoice:
    """Measure the polarity and decide the sign for ``mode`` (``auto`` follows the data).

    A user's ``dark``/``white`` is honoured as given; when it contradicts evidence with |z| ≥ 3 the
    choice carries a warning (the map will come out inverted). ``auto`` on evidence with |z| < 3 (few
    particles, no particle in the images) warns that the choice is uncertain.
    """
    if mode not in MODES:
        raise ValueError(f"polarity must be one of {', '.join(MODES)}, got {mode!r}. Fix: choose one.")
    evidence = measure_polarity(particles, seed=seed, device=device)
    polarity = evidence.detected if mode == "auto" else mode
    warning = ""
    if mode != "auto" and polarity != evidence.detected and abs(evidence.z) >= 3:
        warning = f"the data look protein-{evidence.detected} (z {evidence.z:.0f}): the map will be inverted"
    elif mode == "auto" and abs(evidence.z) < 3:
        warning = "weak evidence: if the map looks inverted, set the polarity (dark or white) by hand"
    return PolarityChoice(mode, polarity, 1.0 if polarity == "dark" else -1.0, evidence, warning)
