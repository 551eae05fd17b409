"""bench/pose_floor.py: the distant pose it compares with is at least ``distant_deg`` from the truth."""

import numpy as np
import torch

from bench_scripts import import_bench
from napari_cryospin.geometry.rotations import axis_angle_to_matrix
from napari_cryospin.model.likelihood import FrequencyDisk
from napari_cryospin.model.volume import HartleyVolume


def test_the_distant_pose_is_the_best_one_at_least_distant_deg_from_the_truth():
    pose_floor = import_bench("pose_floor")
    box = 16
    z, y, x = np.meshgrid(*[np.arange(box) - box // 2] * 3, indexing="ij")
    blob = np.exp(-((x - 4) ** 2 + (y - 1) ** 2 + z**2) / 4.0) + 0.5 * np.exp(-(x**2 + (y + 3) ** 2) / 3.0)
    vol = HartleyVolume(box, torch.zeros(1, box, box, box))
    vol.set_from_real_space(torch.from_numpy(blob.astype(np.float32)))
    k = FrequencyDisk(box, 2.0, torch.device("cpu")).k
    truth = torch.eye(3)[None]
    angles = np.radians([30.0, 60.0, 120.0])
    grid = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, a] for a in angles], dtype=torch.float32))
    grid_slices = vol.slices(grid, k, 0)
    obs = vol.slices(truth, k, 0)
    ctf = torch.ones_like(obs)
    corr = pose_floor._ncc(grid_slices[None], obs)[0]  # (3,): nearer, better
    assert corr[0] > corr[1] > corr[2]
    for deg, expected in ((20.0, 0), (45.0, 1), (90.0, 2)):
        best = pose_floor._best_distant(
            vol, k, grid, grid_slices, truth, obs, ctf, torch.eye(3)[None], deg, top=1
        )
        torch.testing.assert_close(best, corr[expected : expected + 1])
