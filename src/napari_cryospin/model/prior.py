"""The signal prior of exploration's maps: the expected map power per frequency shell, from the images.

Averaged over poses, an image's power at frequency k is ``C(k)²·τ²(|k|) + noise``, where τ² is the
spherically averaged power of the map (the central-slice theorem), so τ² can be measured before any map
exists: ``τ²(shell) = Σ(|Y|² − noise) / Σ C²`` over a sample of images. With it, a map solved from running
sums is the posterior mean ``Σ C·Y / (Σ C² + noise/τ²)`` (RELION's regularised likelihood): shells that
the images in memory cannot yet resolve shrink towards zero instead of carrying their noise into the next
poses, which is what locks small particles into a wrong, self-consistent map.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .likelihood import FrequencyDisk, ImageBatch


def signal_power(batches: Iterable[ImageBatch], disk: FrequencyDisk, noise_level: float) -> torch.Tensor:
    """τ² (S,) per integer shell (cycles per box, S = box/2 + 1), in the squared units of the map's spectrum.

    ``batches`` are whitened image batches (``prepare_batch``); ``noise_level`` is their noise power per
    Fourier coefficient. A shell whose measured excess power is not positive gets a tiny τ² (its map values
    are then set to almost zero); the outermost shells, beyond the disk, take the last measured value.
    """
    n_shells = disk.box // 2 + 1
    shells = torch.round(disk.radius).long().clamp(max=n_shells - 1)
    excess = torch.zeros(n_shells, dtype=torch.float64, device=disk.radius.device)
    weight = torch.zeros_like(excess)
    for batch in batches:
        power = (batch.spectrum.abs() ** 2 - noise_level).sum(0).double()
        excess.index_add_(0, shells, power)
        weight.index_add_(0, shells, (batch.ctf**2).sum(0).double())
    # Sums over three neighbouring shells: the map's power is smooth, the estimate in one shell is not.
    kernel = torch.ones(1, 1, 3, dtype=excess.dtype, device=excess.device)
    excess = torch.nn.functional.conv1d(excess[None, None], kernel, padding=1)[0, 0]
    weight = torch.nn.functional.conv1d(weight[None, None], kernel, padding=1)[0, 0]
    measured = weight > 0
    tau2 = torch.where(measured, excess / weight.clamp_min(1e-30), torch.zeros_like(excess))
    last = int(torch.nonzero(measured).max()) if bool(measured.any()) else 0
    tau2[last + 1 :] = tau2[last]
    floor = 1e-6 * float(tau2.max().clamp_min(1e-30))
    return tau2.clamp_min(floor).float()


def prior_weight(tau2: torch.Tensor, noise_level: float) -> torch.Tensor:
    """The prior's term per shell (S,) for :func:`reconstruction.solve_map`: ``noise / τ²``."""
    return noise_level / tau2
