"""Honest self-assessment: the CTF check, independent halves, and the validity verdict of a run."""

import json
from dataclasses import replace

import mrcfile
import numpy as np
import pytest
import torch

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.diagnostics.ctf_check import check_ctf
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.events import Stage
from napari_cryospin.engine.validity import half_agreement
from napari_cryospin.physics.reconstruction import split_halves
from napari_cryospin.resources import bundled_map_path
from napari_cryospin.simulation.simulate import simulate_to_dir
from tiny_run import TINY_RUN

N = 400


def _other_structure(box: int) -> np.ndarray:
    """A compact asymmetric density unlike the bundled map: a few Gaussian blobs."""
    rng = np.random.default_rng(7)
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((box, box, box), np.float32)
    for _ in range(6):
        c = rng.uniform(-box / 5, box / 5, 3)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 2.0**2))
    return vol


@pytest.fixture(scope="module")
def two_structures(tmp_path_factory):
    """The same 400 simulated particles (poses, CTFs) of the bundled map, and a copy whose half-B rows
    show another structure: the halves a run keeps apart then really hold different molecules."""
    volume, voxel = read_volume(bundled_map_path(32))
    same = tmp_path_factory.mktemp("same")
    simulate_to_dir(volume, voxel, N, same, snr=1.0, max_shift_px=1.0, seed=4)
    mixed = tmp_path_factory.mktemp("mixed")
    simulate_to_dir(volume, voxel, N, mixed, snr=1.0, max_shift_px=1.0, seed=4)
    other = tmp_path_factory.mktemp("other")
    simulate_to_dir(
        _other_structure(32) * volume.sum() / 6, voxel, N, other, snr=1.0, max_shift_px=1.0, seed=4
    )
    _, half_b = split_halves(N, 0)
    with mrcfile.mmap(mixed / "particles.mrcs", "r+") as dst, mrcfile.mmap(other / "particles.mrcs") as src:
        dst.data[half_b] = src.data[half_b]
    return same, mixed


def _run(folder, out) -> dict:
    cfg = RunConfig(
        particles=str(folder / "particles.star"),
        out=str(out),
        heads=2,
        epochs=3,
        explore_epochs=2,
        switch="auto",
        device="cpu",
        encoder_width=4,
        encoder_box=16,
        snapshot_interval_s=60.0,
    )
    last = None
    for snap in Engine(cfg).run():
        last = snap
    assert last is not None and last.stage == Stage.DONE
    metrics = json.loads((out / "metrics.json").read_text())["final"]
    metrics["message"] = last.message
    return metrics


def test_ctf_check_tells_right_from_shuffled_ctfs(two_structures):
    particles = load_particles(two_structures[0] / "particles.star")
    right = check_ctf(particles, seed=0)
    perm = np.random.default_rng(0).permutation(len(particles))
    ctf = particles.ctf
    shuffled = replace(
        particles,
        ctf=replace(ctf, defocus_u=ctf.defocus_u[perm], defocus_v=ctf.defocus_v[perm]),
    )
    wrong = check_ctf(shuffled, seed=0)
    assert right.consistent and right.z > 3
    assert not wrong.consistent
    assert right.own > wrong.own


def test_half_agreement_of_maps():
    volume, _ = read_volume(bundled_map_path(32))
    rng = np.random.default_rng(0)
    noisy = volume + 0.05 * volume.std() * rng.standard_normal(volume.shape)
    assert half_agreement(volume, noisy, 10.0)["agree"]
    assert not half_agreement(volume, _other_structure(32), 10.0)["agree"]


def test_halves_given_different_structures_are_flagged(two_structures, tmp_path):
    """Each half is explored on its own particles only: a run whose halves hold different molecules ends
    with two unlike half maps, an honest (poor) resolution and a warning for the user."""
    mixed = _run(two_structures[1], tmp_path / "mixed")
    assert not mixed["halves_agreement"]["agree"]
    assert mixed["halves_agreement"]["explore_epochs"] == 4  # explored on, to twice the planned 2 epochs
    assert len(mixed["halves_agreement"]["earlier_radii_fsc05"]) == 1
    assert mixed["validity"]["reliable"] is False
    assert mixed["validity"]["ctf_check"]["consistent"]  # the CTFs are right: the halves are the problem
    assert "WARNING" in mixed["message"]


def test_exploration_goes_on_while_the_halves_disagree(tiny_dataset, tmp_path):
    """At exploration's planned end, halves holding the same map end it; unlike halves extend it (and the
    run) by two epochs at a time, at most to twice the planned epochs, at exploration's top radius."""
    cfg = RunConfig(
        particles=str(tiny_dataset / "particles.star"),
        out=str(tmp_path / "run"),
        **{**TINY_RUN, "explore_epochs": 3, "epochs": 6, "explore_extend": "auto"},
    )
    engine = Engine(cfg)
    engine._build()
    model, schedule = engine.model, engine.model.schedule
    volume, _ = read_volume(bundled_map_path(32))
    top = schedule.radius(Stage.EXPLORING, 2)
    model.epoch = 3
    model.volume.set_from_real_space(torch.from_numpy(volume), copy=0)
    model.volume.set_from_real_space(torch.from_numpy(_other_structure(32) * volume.sum() / 6), copy=1)
    assert not engine.stages.halves_settled()
    assert (schedule.explore_end, schedule.epochs) == (5, 8)
    assert schedule.radius(Stage.EXPLORING, 4) == top and schedule.explore_grid(4) == 1
    model.epoch = 5
    assert not engine.stages.halves_settled()
    assert (schedule.explore_end, schedule.epochs) == (6, 9)  # 3 more at most: one epoch was left
    model.epoch = 6
    assert engine.stages.halves_settled() and schedule.explore_end == 6  # no room left
    model.volume.set_from_real_space(torch.from_numpy(volume), copy=1)
    schedule.explore_extended = 0
    model.epoch = 3
    assert engine.stages.halves_settled() and schedule.explore_end == 3  # the same map: it ends
