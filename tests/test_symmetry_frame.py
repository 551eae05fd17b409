"""``--symmetry`` imposed from the switch: the group's axes found in the C1 map (tilted, off the box
centre), map and poses carried into the group's RELION frame, and the map read through the group."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.symmetry_frame import impose_symmetry
from napari_cryospin.geometry.symmetry import group_operators, symmetrize_grid
from napari_cryospin.metrics.alignment import rotate_volume
from napari_cryospin.metrics.translation import translate
from napari_cryospin.physics.reconstruction import backproject
from napari_cryospin.resources import bundled_map_path
from napari_cryospin.simulation.simulate import simulate_to_dir
from tiny_run import TINY_RUN


@pytest.fixture(scope="module")
def tilted_c3(tmp_path_factory):
    """A C3 map whose axis is tilted and runs 2–3 voxels off the box centre; 200 particles of it."""
    volume, voxel = read_volume(bundled_map_path(32))
    c3 = symmetrize_grid(torch.from_numpy(volume).double(), group_operators("C3")).numpy()
    tilt = Rotation.from_euler("ZYZ", [30, 50, 10], degrees=True).as_matrix()
    moved = translate(rotate_volume(c3, tilt), np.array([2.0, -3.0, 2.0]))
    out = tmp_path_factory.mktemp("tilted_c3")
    simulate_to_dir(moved, voxel, 200, out, snr=1.0, max_shift_px=1.0, seed=7)
    return moved, out


def _model_at_truth(data, tmp_path, group: str):
    """A built engine's model holding the true map (both halves) and the true poses, as if at the switch."""
    truth_map, folder = data
    config = RunConfig(
        particles=str(folder / "particles.star"), out=str(tmp_path / "run"), symmetry=group, **TINY_RUN
    )
    engine = Engine(config)
    engine._build()
    engine._release_folder()
    model = engine.model
    for copy in range(model.volume.copies):
        model.volume.set_from_real_space(torch.from_numpy(truth_map) / (model.scale * model.box), copy=copy)
    truth = load_particles(folder / "truth.star")
    model.best_rot = torch.as_tensor(truth.rotations, dtype=torch.float32)
    model.best_shift = torch.as_tensor(truth.shifts, dtype=torch.float32)
    return model, truth


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_the_group_is_found_and_map_and_poses_move_into_its_frame(tilted_c3, tmp_path):
    model, truth = _model_at_truth(tilted_c3, tmp_path, "C3")
    before = backproject(truth, model.best_rot.numpy(), model.best_shift.numpy())
    record = impose_symmetry(model, None)
    assert record["imposed"] and record["score"] > 0.95
    new_map = model.volume.real_space(0).cpu().numpy()
    turned = symmetrize_grid(torch.from_numpy(new_map).double(), group_operators("C3")).numpy()
    assert _corr(new_map, turned) > 0.98  # C3 about z through the box centre: RELION's frame
    assert _corr(new_map, before) < 0.8  # it did move
    after = backproject(truth, model.best_rot.numpy(), model.best_shift.numpy())
    assert _corr(after, new_map) > 0.9  # the carried poses make the carried map
    assert model.volume.operators is not None and len(model.volume.operators) == 3


def test_a_group_the_map_does_not_show_is_not_imposed(tilted_c3, tmp_path):
    model, _ = _model_at_truth(tilted_c3, tmp_path, "D5")
    rot = model.best_rot.clone()
    record = impose_symmetry(model, None)
    assert not record["imposed"] and "D5" in record["reason"]
    assert model.volume.operators is None and torch.equal(model.best_rot, rot)
