"""Exploration finds far off-centre picks: a wide 2-px shift grid, then 1 px around each coarse shift."""

import numpy as np
import torch

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.resources import bundled_map_path
from napari_cryospin.simulation import simulate_to_dir


def test_exploration_finds_shifts_beyond_the_local_search(tmp_path):
    volume, voxel = read_volume(bundled_map_path(32))
    data = tmp_path / "far"
    simulate_to_dir(volume, voxel, 120, data, snr=2.0, max_shift_px=3.5, seed=4)  # box/16 is 2 px
    config = RunConfig(
        particles=str(data / "particles.star"),
        out=str(tmp_path / "run"),
        device="cpu",
        explore_epochs=2,
        epochs=3,
        encoder_width=4,
        encoder_box=16,
    )
    eng = Engine(config)
    eng._build()
    truth = load_particles(data / "truth.star")
    true_shift = torch.as_tensor(truth.shifts, dtype=torch.float32)
    far = true_shift.abs().max(1).values > eng.schedule.shift_search + 0.5
    assert int(far.sum()) >= 20
    vol, _ = read_volume(data / "truth_volume.mrc")
    n_points = eng.disk.count(8)
    idx = np.arange(eng.n)

    def explore_against_truth() -> torch.Tensor:
        for copy in range(eng.volume.copies):
            eng.volume.set_from_real_space(torch.as_tensor(vol) / (eng.scale * eng.box), copy=copy)
        eng._exploring_step(idx, n_points)
        return (eng.best_shift - true_shift).norm(dim=1)

    assert eng.schedule.explore_grid(0) == 0
    coarse = explore_against_truth()  # 2-px grid out to box/8 around the box centre
    assert float(coarse[far].median()) <= 1.5
    eng.epoch = 1
    assert eng.schedule.explore_grid(1) == 1
    eng.search_centres = eng.best_shift.round()
    fine = explore_against_truth()  # 1-px grid around each particle's coarse shift
    assert float(fine[far].median()) <= 0.75
    assert float(fine.median()) <= float(coarse.median())
