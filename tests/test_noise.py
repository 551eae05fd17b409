"""The noise model: background power per shell and optics group, and whitening in the likelihood."""

import numpy as np
import pandas as pd
import pytest
import torch

from napari_cryospin.data.errors import ParticleFileError
from napari_cryospin.model.likelihood import FrequencyDisk
from napari_cryospin.model.noise import background_power, estimate_noise, optics_groups
from napari_cryospin.simulation.nuisances import colour, noise_filter


def _radial(power_2d: np.ndarray) -> np.ndarray:
    """Mean of an rfft2-layout (L, L//2 + 1) array per integer shell."""
    box = power_2d.shape[0]
    r = np.round(np.hypot(np.fft.rfftfreq(box)[None] * box, np.fft.fftfreq(box)[:, None] * box)).astype(int)
    return (np.bincount(r.ravel(), power_2d.ravel()) / np.bincount(r.ravel()))[: box // 2 + 1]


def test_background_power_of_white_noise_is_its_variance_in_every_shell():
    noise = torch.randn(400, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3.0
    power = background_power(noise).numpy()[:17]  # shells to Nyquist (the corners follow)
    assert np.allclose(power, 9.0, rtol=0.08)


def test_background_power_follows_coloured_noise():
    rng = np.random.default_rng(1)
    images = colour(rng.normal(size=(400, 64, 64)), noise_filter(64))
    power = background_power(torch.from_numpy(images).double()).numpy()
    truth = _radial(noise_filter(64) ** 2)
    # The estimate is the truth blurred by the background window (~1 shell): compare away from shell 0.
    assert np.allclose(power[3:31], truth[3:31], rtol=0.12)
    assert power[2] / power[25] > 3  # far more noise at low frequency


class _Stack:
    """Images served like ParticleStack (index → (k, L, L))."""

    def __init__(self, images):
        self.images, self.box = images, images.shape[-1]

    def __getitem__(self, idx):
        return self.images[idx]

    def __len__(self):
        return len(self.images)


class _Particles:
    def __init__(self, images, groups):
        self.stack = _Stack(images)
        self.table = pd.DataFrame({"rlnOpticsGroup": groups})
        self.ctf = None
        self.path = __import__("pathlib").Path("fake.star")


def test_estimate_per_optics_group_keeps_their_relative_noise():
    rng = np.random.default_rng(2)
    box, n = 32, 300
    images = rng.normal(size=(2 * n, box, box)).astype(np.float32)
    images[n:] *= 2.0  # group 2: four times the noise power, white
    groups = np.repeat([1, 2], n)
    disk = FrequencyDisk(box, 1.0, torch.device("cpu"))
    model = estimate_noise(_Particles(images, groups), 1.0, disk.radius, "auto")
    assert model.labels == ["1", "2"]
    assert np.allclose(model.power[1, 1:] / model.power[0, 1:], 4.0, rtol=0.15)
    assert np.isclose(model.power[:, np.round(disk.radius.numpy()).astype(int)].mean(), 1.0, rtol=0.05)
    w = model.weights(np.array([0, n]))
    assert w.shape == (2, len(disk.radius))
    assert torch.allclose(w[0] / w[1], torch.full_like(w[0], 2.0), rtol=0.1)  # 1/σ
    # Whitened, every coefficient's noise power is the level: group 1's (variance 1) times its 1/σ².
    assert np.isclose(1.0 * w[0, 0].item() ** 2, model.level, rtol=0.1)
    assert np.isclose(4.0 * w[1, 0].item() ** 2, model.level, rtol=0.1)
    white = estimate_noise(_Particles(images, groups), 1.0, disk.radius, "white")
    assert torch.all(white.weights(np.arange(2 * n)) == 1)
    assert np.isclose(white.level, 2.5, rtol=0.1)  # the mean of 1 and 4


def test_masked_images_are_refused_with_one_line():
    images = np.zeros((20, 32, 32), np.float32)
    images[:, 8:24, 8:24] = np.random.default_rng(3).normal(size=(20, 16, 16))
    disk = FrequencyDisk(32, 1.0, torch.device("cpu"))
    with pytest.raises(ParticleFileError, match=r"fake\.star: .*background.*Fix: "):
        estimate_noise(_Particles(images, np.ones(20, int)), 1.0, disk.radius)
    assert estimate_noise(_Particles(images, np.ones(20, int)), 1.0, disk.radius, "white").level is None


def test_optics_groups_from_ctf_when_the_table_has_no_group_column():
    class P:
        table = None

        class ctf:
            voltage = np.array([300.0, 200.0, 300.0])
            cs = np.array([2.7, 2.7, 2.7])
            amplitude_contrast = np.array([0.1, 0.07, 0.1])

    groups, labels = optics_groups(P)
    assert groups[0] == groups[2] != groups[1] and len(labels) == 2


def _best_grid_poses(tiny_dataset, tmp_path, mode):
    """Each particle's best coarse-grid rotation index against a known-pose map, under noise ``mode``."""
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.engine.config import RunConfig
    from napari_cryospin.engine.engine import Engine
    from napari_cryospin.model.search import SoftAssignment, grid_search, insert_weighted
    from napari_cryospin.physics.reconstruction import solve_map

    truth = load_particles(tiny_dataset / "truth.star")
    cfg = RunConfig(particles=str(tiny_dataset / "particles.star"), out=str(tmp_path / mode), device="cpu")
    eng = Engine(RunConfig.from_dict({**cfg.to_dict(), "noise_model": mode}))
    eng._build()
    batch = eng.model.batch(np.arange(eng.model.n))
    one = torch.ones(eng.model.n, 1)
    poses = SoftAssignment(
        torch.as_tensor(truth.rotations, dtype=torch.float32)[:, None],
        torch.as_tensor(truth.shifts, dtype=torch.float32)[:, None],
        one,
        one,
    )
    n = eng.model.disk.count(10)
    eng.model.volume.set_from_real_space(
        torch.from_numpy(solve_map(insert_weighted(batch, poses, eng.model.disk, n)))
    )
    found = grid_search(
        eng.model.volume,
        batch,
        eng.model.grids[0],
        torch.zeros(eng.model.n, 2),
        eng.model.offsets,
        eng.model.disk,
        n,
        1,
    )
    return found.rotations[:, 0], eng


def test_white_noise_leaves_the_search_unchanged(tiny_dataset, tmp_path):
    auto, eng = _best_grid_poses(tiny_dataset, tmp_path, "auto")
    white, _ = _best_grid_poses(tiny_dataset, tmp_path, "white")
    weights = eng.model.noise.weights(np.arange(eng.model.n))
    assert float(weights.std() / weights.mean()) < 0.05  # flat: the data's noise is white
    same = torch.isclose(auto, white, atol=1e-5).flatten(1).all(1).float().mean()
    assert same > 0.97
