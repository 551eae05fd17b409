"""Symmetry expansion (``cryospin expand``): each mate of a pose gives the particle's image again, also for
axes that do not pass through the box centre (a run's detected symmetry)."""

import json

import numpy as np
import pytest
import starfile
import torch
from scipy.spatial.transform import Rotation

from napari_cryospin.cli import main
from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.data.poses_out import write_poses_star
from napari_cryospin.geometry.symmetry import expand_poses, group_operators, symmetrize_grid
from napari_cryospin.physics.reconstruction import backproject
from napari_cryospin.resources import bundled_map_path
from napari_cryospin.simulation.simulate import simulate_to_dir

CENTRE = np.array([3.0, -2.0, 1.0])  # x, y, z voxels from the box centre


@pytest.fixture(scope="module")
def c3_off_centre(tmp_path_factory):
    """A C3 map whose axis runs through CENTRE (not the box centre), and 200 noisy particles of it."""
    volume, voxel = read_volume(bundled_map_path(32))
    symmetric = symmetrize_grid(torch.from_numpy(volume).double(), group_operators("C3")).numpy()
    moved = np.roll(symmetric, tuple(int(c) for c in CENTRE[::-1]), axis=(0, 1, 2)).astype(np.float32)
    out = tmp_path_factory.mktemp("c3")
    simulate_to_dir(moved, voxel, 200, out, snr=0.3, max_shift_px=1.0, seed=5)
    return moved, load_particles(out / "truth.star"), out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_mates_about_the_box_centre_keep_the_shift():
    rot = np.stack([np.eye(3), group_operators("C4")[1]])
    ops = group_operators("C2")
    mates, shifts, index = expand_poses(rot, np.array([[1.0, 2.0], [0.0, -1.0]]), ops)
    assert mates.shape == (4, 3, 3) and index.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(mates[1], ops[1] @ rot[0])
    np.testing.assert_allclose(shifts, [[1, 2], [1, 2], [0, -1], [0, -1]])


def test_every_mate_gives_the_image_again_for_an_off_centre_axis(c3_off_centre):
    truth_map, particles, _ = c3_off_centre
    rot, shift = particles.rotations, particles.shifts
    ops = group_operators("C3")
    plain = _corr(backproject(particles, rot, shift), truth_map)
    rot_e, shift_e, index = expand_poses(rot, shift, ops, CENTRE)
    expanded = _corr(backproject(particles.subset(index), rot_e, shift_e), truth_map)
    rot_w, shift_w, _ = expand_poses(rot, shift, ops, -CENTRE)  # the centre on the wrong side
    wrong = _corr(backproject(particles.subset(index), rot_w, shift_w), truth_map)
    assert expanded > plain + 0.02  # three times the images, each where it belongs
    assert wrong < plain - 0.02  # mates misplaced blur the map


def test_cli_expands_a_run_by_its_detected_group(c3_off_centre, tmp_path):
    _, particles, _ = c3_off_centre
    run = tmp_path / "run"
    run.mkdir()
    write_poses_star(run / "poses.star", particles, particles.rotations, particles.shifts)
    frame = group_operators("C4")[1]  # the detected axes: the group's frame turned (here by 90° about z)
    metrics = {
        "final": {
            "symmetry": {"group": "C3", "frame": frame.tolist(), "centre_voxels": (CENTRE / 2).tolist()},
            "maps": {"working_voxel_size": 2 * particles.pixel_size},  # detected at half the box
        }
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["expand", str(run)]) == 0
    table = starfile.read(run / "poses_expanded.star")["particles"]  # rows repeat images: read it as is
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    written = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()
    origins = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / particles.pixel_size
    ops = frame @ group_operators("C3") @ frame.T
    rot, shift, index = expand_poses(particles.rotations, particles.shifts, ops, CENTRE)
    assert len(table) == 3 * len(particles)
    numbers = [name.split("@")[0] for name in table["rlnImageName"]]  # each particle's image, three times
    assert numbers == [particles.table["rlnImageName"][i].split("@")[0] for i in index]
    np.testing.assert_allclose(written, rot, atol=1e-5)
    np.testing.assert_allclose(origins, shift, atol=1e-4)


def test_cli_refuses_a_run_without_symmetry(c3_off_centre, tmp_path, capsys):
    _, particles, _ = c3_off_centre
    write_poses_star(tmp_path / "poses.star", particles, particles.rotations, particles.shifts)
    metrics = {"final": {"symmetry": {"group": "C1", "frame": np.eye(3).tolist(), "centre_voxels": [0, 0, 0]},
                         "maps": {"working_voxel_size": particles.pixel_size}}}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert main(["expand", str(tmp_path)]) == 2
    assert "no mates to expand by" in capsys.readouterr().err
