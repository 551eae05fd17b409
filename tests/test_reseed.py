"""A half left at chance beside a solved one restarts from the solved half's low-passed map."""

import numpy as np
import torch

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.reseed import low_pass
from napari_cryospin.geometry.rotations import random_rotations
from napari_cryospin.model.search import SoftAssignment, insert_weighted
from napari_cryospin.physics.fourier import fftn_centered, radial_shells
from napari_cryospin.physics.reconstruction import solve_map
from napari_cryospin.resources import bundled_map_path
from tiny_run import TINY_RUN


def _half_map(engine: Engine, copy: int, rotations: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Half ``copy``'s images inserted at the given poses (n, …) and solved: a map in the model's units."""
    model = engine.model
    idx = np.flatnonzero(model.halves_np == copy)
    ones = torch.ones(len(idx), 1)
    poses = SoftAssignment(rotations[idx][:, None], shifts[idx][:, None], ones, ones)
    sums = insert_weighted(model.batch(idx), poses, model.disk, model.disk.count(12))
    return torch.from_numpy(solve_map(sums))


def _engine(tiny_dataset, tmp_path) -> Engine:
    cfg = RunConfig(
        particles=str(tiny_dataset / "particles.star"),
        out=str(tmp_path / "run"),
        **{**TINY_RUN, "explore_epochs": 2, "epochs": 4, "explore_extend": "auto"},
    )
    engine = Engine(cfg)
    engine._build()
    engine.model.epoch = 2
    return engine


def test_low_pass_keeps_the_band_and_removes_the_rest():
    volume = torch.from_numpy(read_volume(bundled_map_path(32))[0])
    out = low_pass(volume, 5.0)
    shells = radial_shells(32, 3)
    before, after = fftn_centered(volume, 3), fftn_centered(out, 3)
    assert torch.allclose(after[shells <= 5], before[shells <= 5], atol=1e-3 * before.abs().max())
    assert after[shells >= 7].abs().max() < 1e-4 * before.abs().max()


def test_a_half_at_chance_restarts_from_the_solved_half(tiny_dataset, tmp_path):
    """Half A's map is made at the true poses, half B's at random ones: at exploration's planned end the
    run explores on and half B starts again from half A's map below exploration's first radius."""
    engine = _engine(tiny_dataset, tmp_path)
    model = engine.model
    truth = load_particles(tiny_dataset / "truth.star")
    rot = torch.as_tensor(truth.rotations, dtype=torch.float32)
    shift = torch.as_tensor(truth.shifts, dtype=torch.float32)
    chance = random_rotations(model.n, torch.Generator().manual_seed(2))
    model.volume.set_from_real_space(_half_map(engine, 0, rot, shift), copy=0)
    model.volume.set_from_real_space(_half_map(engine, 1, chance, shift), copy=1)
    assert not engine.stages.halves_settled()
    record = model.restarted
    assert record is not None and record["half"] == "B"
    assert record["held_out_fit"][0] > record["held_out_fit"][1] and record["margin_se"] >= 3.0
    expected = low_pass(model.volume.real_space(0), record["radius"])
    assert torch.allclose(model.volume.real_space(1), expected, atol=1e-4 * expected.abs().max())
    assert engine.stages.explore_sums[1] is None
    assert model.state()["restarted"] == record


def test_halves_alike_are_not_restarted(tiny_dataset, tmp_path):
    """Both halves' maps made at the true poses agree: exploration ends, nothing is restarted."""
    engine = _engine(tiny_dataset, tmp_path)
    truth = load_particles(tiny_dataset / "truth.star")
    rot = torch.as_tensor(truth.rotations, dtype=torch.float32)
    shift = torch.as_tensor(truth.shifts, dtype=torch.float32)
    for c in (0, 1):
        engine.model.volume.set_from_real_space(_half_map(engine, c, rot, shift), copy=c)
    assert engine.stages.halves_settled() and engine.model.restarted is None
