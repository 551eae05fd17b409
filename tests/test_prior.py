"""The exploration maps' signal prior: τ² measured from images, and the posterior-mean map it gives."""

import numpy as np
import torch

from napari_cryospin.model.likelihood import FrequencyDisk, ImageBatch
from napari_cryospin.model.prior import prior_weight, signal_power
from napari_cryospin.physics.reconstruction import Accumulator, solve_map


def _batches(disk: FrequencyDisk, tau2, level: float, n: int, seed: int = 0):
    """Spectra ``C·S + N`` with E|S|² = tau2(|k|), E|N|² = level, and a CTF that varies per image."""
    gen = torch.Generator().manual_seed(seed)
    r = disk.radius
    for _ in range(n // 100):
        ctf = torch.sin(0.3 * r[None] ** 1.2 + torch.rand(100, 1, generator=gen) * 6) * 0.9 + 0.1

        def cplx(var):
            re, im = torch.randn(2, 100, len(r), generator=gen)
            return torch.complex(re, im) * (var / 2) ** 0.5

        spectrum = ctf * cplx(tau2(r)) + cplx(torch.full_like(r, level))
        yield ImageBatch(torch.arange(100), torch.zeros(100, 1, 1), spectrum, ctf)


def test_signal_power_recovers_the_spectrum_under_noise_and_ctf():
    disk = FrequencyDisk(32, 2.0, torch.device("cpu"))

    def tau2(r):
        return 5.0 * torch.exp(-r / 4.0)

    est = signal_power(_batches(disk, tau2, 0.9, 2000), disk, 0.9)
    shells = torch.arange(len(est), dtype=torch.float32)
    assert est.shape == (17,)
    # Three-shell smoothing biases a curved spectrum by a few per cent; noise leaves ~5 % at shell 10.
    assert torch.allclose(est[1:11], tau2(shells[1:11]), rtol=0.15)
    assert est[12] < est[4] / 5  # it follows the fall (e⁻² between them), far below the noise
    weight = prior_weight(est, 0.9)
    assert torch.allclose(weight, 0.9 / est)


def test_pure_noise_gives_a_prior_that_zeroes_the_map():
    disk = FrequencyDisk(32, 2.0, torch.device("cpu"))
    est = signal_power(_batches(disk, lambda r: torch.zeros_like(r), 1.0, 1000), disk, 1.0)
    assert float(est.max()) < 0.05  # nothing above the noise: (almost) no signal anywhere


def test_solve_map_with_a_prior_is_the_posterior_mean():
    box = 16
    gen = torch.Generator().manual_seed(0)
    num = torch.complex(*torch.randn(2, box, box, box, generator=gen))
    den = torch.full((box, box, box), 4.0)
    acc = Accumulator(num, den)
    plain = solve_map(acc, wiener=0.0)
    weak = solve_map(acc, prior=torch.full((box // 2 + 1,), 1e-6))
    strong = solve_map(acc, prior=torch.full((box // 2 + 1,), 4.0))
    assert np.allclose(weak, plain, atol=1e-5 * np.abs(plain).max())
    assert np.allclose(strong, plain / 2, atol=1e-5 * np.abs(plain).max())  # 4 / (4 + 4)
