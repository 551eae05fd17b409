"""The noise model of the likelihood: noise power per frequency shell and optics group, from the background.

Real noise is coloured (detector MTF, ice: far more power at low frequency), so an unweighted squared
error lets the noisiest frequencies dominate. Each particle's residual is instead divided by its optics
group's noise power per shell (whitening): the likelihood weighs each frequency by what it can be trusted
for, as RELION's σ²(shell) does. The power is measured in the background — the pixels outside a circle of
radius ``BACKGROUND_RADIUS · box``, where there is no particle — of a sample of each group's images.
Reading this module imports no torch (``RunConfig`` takes its modes from here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..data.errors import ParticleFileError

if TYPE_CHECKING:
    import torch

MODES = ("auto", "white")
"""``auto``: noise power estimated per shell and optics group; ``white``: flat (the unweighted residual)."""

BACKGROUND_RADIUS = 0.375
"""Background = outside this fraction of the box from the centre (relion_preprocess's default, 75 % of
half the box)."""

SAMPLE = 1000
"""Images sampled per optics group for the estimate (about 10⁶ background coefficients per shell band)."""


def optics_groups(particles) -> tuple[np.ndarray, list[str]]:
    """Each particle's optics group index (n,) into the returned labels.

    From ``rlnOpticsGroup`` when the table has it, otherwise from the distinct (kV, Cs, amplitude
    contrast) triples of the CTF (cryoSPARC files have no group column).
    """
    table = getattr(particles, "table", None)
    if table is not None and "rlnOpticsGroup" in table.columns:
        keys = table["rlnOpticsGroup"].astype(str).to_numpy()
    else:
        ctf = particles.ctf
        triples = zip(ctf.voltage, ctf.cs, ctf.amplitude_contrast, strict=True)
        keys = np.array([f"{v:g} kV, Cs {c:g}, AC {a:g}" for v, c, a in triples])
    labels, index = np.unique(keys, return_inverse=True)
    return index.astype(np.int64), [str(label) for label in labels]


def background_mask(box: int) -> np.ndarray:
    """(L, L) bool: the pixels farther than ``BACKGROUND_RADIUS · box`` from the centre."""
    grid = np.arange(box) - box // 2
    return np.hypot(grid[:, None], grid[None, :]) > BACKGROUND_RADIUS * box


def background_power(images: torch.Tensor) -> torch.Tensor:
    """Noise power (S,) per orthonormal Fourier coefficient and integer shell of images (k, L, L).

    Each image's background (minus its mean) is Fourier-transformed with the particle zeroed; the power
    is divided by what white noise of unit variance would give there, so white noise of variance v gives
    v in every shell (a smooth spectrum is blurred by ~1 shell). Shell 0 (the mean) takes shell 1's value.
    """
    import torch

    from ..physics.fourier import fftn_centered, radial_shells

    box = images.shape[-1]
    mask = torch.from_numpy(background_mask(box)).to(images.device)
    inside = images[:, mask]
    centred = (images - inside.mean(1)[:, None, None]) * mask
    # White noise of variance v gives E|F(k)|² = v·(N − |M(k)|²/N), with M the mask's transform and N its
    # pixel count (removing the mean takes one degree of freedom): divide by that, not by N.
    n_bg = mask.sum().to(images.dtype)
    spread = n_bg - fftn_centered(mask.to(images.dtype), 2).abs() ** 2 / n_bg
    power = (fftn_centered(centred, 2).abs() ** 2).mean(0) / spread.clamp_min(1e-6 * n_bg)
    shells = radial_shells(box, 2, images.device).reshape(-1)
    total = torch.zeros(int(shells.max()) + 1, device=images.device, dtype=power.dtype)
    total.index_add_(0, shells, power.reshape(-1))
    count = torch.zeros_like(total).index_add_(0, shells, torch.ones_like(power).reshape(-1))
    per_shell = total / count.clamp_min(1)
    per_shell[0] = per_shell[1]
    return per_shell


@dataclass
class NoiseModel:
    """Noise power per optics group and shell, and the whitening it implies on the frequency disk.

    ``power`` (G, S) is per orthonormal Fourier coefficient of the images as the engine reads them
    (divided by its global scale), rescaled so its mean over the disk's points is 1: with white noise
    every weight is ≈ 1 and the likelihood is the unweighted one.
    """

    power: np.ndarray  # (G, S) relative noise power per group and integer shell (cycles per box)
    groups: np.ndarray  # (n,) each particle's group index
    labels: list[str]  # optics group names, (G,)
    mode: str  # "auto" (estimated) or "white"
    level: float | None = None  # noise power per Fourier coefficient after whitening (None: not measured)
    _weights: torch.Tensor | None = None  # (G, P) 1/σ on the disk, set by :meth:`on_disk`

    def on_disk(self, radius: torch.Tensor) -> NoiseModel:
        """Bind the model to a frequency disk (its point radii (P,), cycles per box); returns self."""
        import torch

        shells = torch.round(radius).long().clamp(max=self.power.shape[1] - 1)
        power = torch.as_tensor(self.power, dtype=torch.float32, device=radius.device)[:, shells]
        self._weights = power.rsqrt()
        return self

    def weights(self, idx: np.ndarray) -> torch.Tensor:
        """Whitening weights 1/σ (B, P) on the bound disk for particles ``idx`` (B,)."""
        import torch

        assert self._weights is not None, "bind the noise model to a disk first (on_disk)"
        return self._weights[torch.as_tensor(self.groups[np.asarray(idx)], device=self._weights.device)]

    def to_dict(self) -> dict:
        """Plain-JSON summary for metrics.json: mode, groups and each group's relative power per shell."""
        return {
            "mode": self.mode,
            "groups": self.labels,
            "particles_per_group": np.bincount(self.groups, minlength=len(self.labels)).tolist(),
            "power_per_shell": np.round(self.power, 4).tolist(),
            "low_to_high": [float(p[1:4].mean() / p[-4:].mean()) for p in self.power],
        }


def estimate_noise(
    particles, scale: float, radius: torch.Tensor, mode: str = "auto", seed: int = 0
) -> NoiseModel:
    """The noise model of ``particles`` (images divided by ``scale``), bound to a disk of point radii (P,).

    ``mode`` ``white`` gives flat power (every weight 1). ``auto`` samples up to :data:`SAMPLE` images per
    optics group and measures their background power per shell; the powers are rescaled together (one
    factor for all groups, so a noisier group still counts less) to a mean of 1 over the disk's points.
    """
    import torch

    if mode not in MODES:
        raise ValueError(f"noise model must be one of {', '.join(MODES)}, got {mode!r}. Fix: choose one.")
    groups, labels = optics_groups(particles)
    power = _background_powers(particles, scale, groups, len(labels), seed)
    shells = torch.round(radius).long().clamp(max=power.shape[1] - 1).cpu().numpy()
    share = np.bincount(groups, minlength=len(labels)) / len(groups)
    measured = bool(np.isfinite(power).all() and (power > 0).all())
    if mode == "white":
        level = float((power[:, shells].mean(1) * share).sum()) if measured else None
        return NoiseModel(np.ones_like(power), groups, labels, mode, level).on_disk(radius)
    if not measured:
        raise ParticleFileError(
            f"{particles.path.name}: the image background (outside {BACKGROUND_RADIUS:g} of the box) is "
            "constant or not finite, so its noise cannot be measured. Fix: use images without a mask, or "
            "--noise-model white."
        )
    # Power ≥ 1 % of the group's median: a shell with almost no measured noise must not dominate.
    power = np.maximum(power, 0.01 * np.median(power, axis=1, keepdims=True))
    mean = float((power[:, shells].mean(1) * share).sum())
    # Whitened by sqrt(power / mean), every coefficient's noise power is ``mean``.
    return NoiseModel(power / mean, groups, labels, mode, mean).on_disk(radius)


def _background_powers(particles, scale: float, groups: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """Background power (G, S) per optics group and shell of up to :data:`SAMPLE` images per group."""
    import torch

    n_shells = particles.stack.box // 2 + 1
    rng = np.random.default_rng(seed)
    power = np.empty((n_groups, n_shells))
    for g in range(n_groups):
        members = np.flatnonzero(groups == g)
        pick = np.sort(rng.choice(members, size=min(len(members), SAMPLE), replace=False))
        per_shell = torch.zeros(n_shells, dtype=torch.float64)
        for start in range(0, len(pick), 256):
            images = torch.from_numpy(particles.stack[pick[start : start + 256]]).double() / scale
            part = background_power(images)[:n_shells]
            per_shell += part * len(images) / len(pick)
        power[g] = per_shell.numpy()
    return power
