"""Pseudo-symmetry mates: found from a map's self-correlation, and tested per particle while auto-decoding."""

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.events import Stage
from napari_cryospin.metrics.alignment import rotate_volume
from napari_cryospin.model.mates import map_mates
from napari_cryospin.model.poses import ParticlePoses
from napari_cryospin.resources import bundled_map_path
from tiny_run import TINY_RUN


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(Rotation.from_matrix(a.T @ b).magnitude()))


def test_map_mates_finds_a_planted_two_fold_first():
    volume, _ = read_volume(bundled_map_path(32))
    s = Rotation.from_rotvec(np.pi * np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])).as_matrix()
    symmetric = volume + rotate_volume(volume, s)  # V(S·q) = V(q) exactly, S² = 1
    mates, scores = map_mates(symmetric, 3)
    assert mates.shape == (3, 3, 3) and scores[0] >= scores[1] >= scores[2]
    assert _angle_deg(mates[0], s) < 5.0
    assert scores[0] > 0.95
    # every mate is a proper rotation at least 30° from the identity
    assert np.allclose(mates @ mates.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert all(_angle_deg(m, np.eye(3)) > 30.0 for m in mates)


def test_mates_test_brings_particles_back_from_a_wrong_mate(tiny_dataset, tmp_path):
    """Particles posed at S·R (the wrong mate) return to R when S⁻¹ is a mate; the right ones stay."""
    config = RunConfig(
        particles=str(tiny_dataset / "particles.star"), out=str(tmp_path / "run"), **TINY_RUN, eval_every=1
    )
    eng = Engine(config)
    eng._build()
    truth = load_particles(tiny_dataset / "truth.star")
    vol, _ = read_volume(tiny_dataset / "truth_volume.mrc")
    for copy in range(eng.volume.copies):
        eng.volume.set_from_real_space(torch.as_tensor(vol) / (eng.scale * eng.box), copy=copy)
    s = Rotation.from_euler("zyx", [70.0, 20.0, -10.0], degrees=True).as_matrix()
    true_rot = truth.rotations.astype(np.float64)
    wrong = np.arange(eng.n) % 2 == 0
    start = np.where(wrong[:, None, None], s @ true_rot, true_rot)
    eng.poses = ParticlePoses(
        torch.as_tensor(start, dtype=torch.float32), torch.as_tensor(truth.shifts, dtype=torch.float32)
    )
    eng.pose_opt = eng._pose_optimizer()
    eng.stage = Stage.DECODING
    eng.schedule.switch_epoch, eng.epoch = 0, 2  # an epoch that reuses the mates found before
    assert eng.schedule.tests_mates(eng.epoch) and not eng.schedule.finds_mates(eng.epoch)
    decoy = Rotation.from_euler("zyx", [0.0, 90.0, 0.0], degrees=True).as_matrix()
    eng.mates = [np.stack([s.T, decoy]).astype(np.float32)] * eng.volume.copies
    eng._test_mates()
    rot, _ = eng.current_poses()
    errors = np.array([_angle_deg(r, t) for r, t in zip(rot, true_rot, strict=True)])
    assert np.mean(errors[wrong] < 2.0) >= 0.9
    assert np.mean(errors[~wrong] < 0.01) >= 0.95
    assert abs(eng.mates_moved - wrong.mean()) < 0.1
