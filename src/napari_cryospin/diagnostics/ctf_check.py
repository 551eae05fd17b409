"""Do the images follow their CTF parameters? Each image's Thon rings against its own CTF and others'.

Per image, the radial power spectrum (minus the mean over images, which removes the common signal and
noise spectra) is correlated with the radial average of its own CTF² (minus the mean CTF²), and with the
CTF² of other images. Right parameters correlate better with their own image than with a random other
one; shuffled rows, wrong defocus units or a wrong pixel size do not. Single images are far too noisy to
tell, but the paired difference over a thousand or more is decisive. Torch is imported only to measure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_Z = 3.0
"""Below this z-score the images are not shown to follow their CTF parameters."""


@dataclass
class CTFCheck:
    """Mean correlation of image power with the own CTF² (``own``) and with others' (``others``), the
    paired z-score of the difference, and the number of images used."""

    own: float
    others: float
    z: float
    n_particles: int

    @property
    def consistent(self) -> bool:
        """Whether the images follow their CTF parameters beyond doubt (z ≥ ``MIN_Z``)."""
        return self.z >= MIN_Z

    def to_dict(self) -> dict:
        """Plain-JSON form, for metrics.json."""
        return {**asdict(self), "consistent": self.consistent}

    def summary(self) -> str:
        """A short phrase for messages."""
        verdict = "images follow their CTFs" if self.consistent else "images do NOT follow their CTFs"
        return f"{verdict} (z {self.z:.1f})"


def check_ctf(
    particles: Any, n_sample: int = 2000, batch: int = 256, seed: int = 0, device: Any = "cpu"
) -> CTFCheck:
    """Measure :class:`CTFCheck` on up to ``n_sample`` images of ``particles`` (stack, ctf, pixel_size)."""
    import torch

    from ..physics.ctf import ctf_2d
    from ..physics.fourier import fftn_centered, frequency_grid_2d, radial_shells
    from ..physics.reconstruction import ctf_tensors

    n = len(particles.stack)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, n_sample), replace=False))
    box = int(particles.stack.box)
    shells = radial_shells(box, 2, device).reshape(-1)
    keep = (shells >= 2) & (shells < box // 2)  # skip the lowest shells (envelope) and the corners
    shells = shells[keep]
    nshell = box // 2
    ones = torch.ones_like(shells, dtype=torch.float32)
    counts = torch.zeros(nshell, device=device).index_add_(0, shells, ones)
    freqs = frequency_grid_2d(box, device).reshape(-1, 2)[keep] / (box * float(particles.pixel_size))

    def radial(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(values), nshell, device=device).index_add_(1, shells, values)
        return (out / counts.clamp_min(1))[:, 2:]

    power, ctf2 = [], []
    for start in range(0, len(idx), batch):
        part = idx[start : start + batch]
        images = torch.as_tensor(np.asarray(particles.stack[part]), dtype=torch.float32, device=device)
        spectra = fftn_centered(images, 2).reshape(len(part), -1)[:, keep]
        p = radial(spectra.real**2 + spectra.imag**2)
        power.append(p / p.mean(1, keepdim=True))
        ctf2.append(radial(ctf_2d(freqs, **ctf_tensors(particles.ctf, part, device)) ** 2))
    p = torch.cat(power)
    c = torch.cat(ctf2)
    p = p - p.mean(0)
    c = c - c.mean(0)

    def corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)

    own = corr(p, c)
    others = corr(p, c[torch.as_tensor(np.roll(np.arange(len(idx)), 1 + len(idx) // 2), device=device)])
    diff = (own - others).double().cpu().numpy()
    z = float(diff.mean() / max(diff.std(ddof=1) / np.sqrt(len(diff)), 1e-12)) if len(diff) > 1 else 0.0
    return CTFCheck(float(own.mean()), float(others.mean()), z, len(idx))
