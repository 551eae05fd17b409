"""Imposed symmetry: a symmetrised backprojection is worth n× the images; the volume reads symmetric."""

from __future__ import annotations

import numpy as np
import torch

from napari_cryospin.geometry.rotations import random_rotations
from napari_cryospin.geometry.symmetry import group_operators, symmetrize_grid
from napari_cryospin.metrics.alignment import rotate_volume
from napari_cryospin.model.volume import HartleyVolume
from napari_cryospin.physics.fourier import hartley_centered
from napari_cryospin.physics.reconstruction import backproject
from test_reconstruction import _blob_volume, _corr, _simulate


def _c5_map() -> tuple[np.ndarray, np.ndarray]:
    ops = group_operators("C5")
    vol = symmetrize_grid(torch.as_tensor(_blob_volume(seed=3), dtype=torch.float64), ops).numpy()
    return vol.astype(np.float32), ops


def test_symmetrized_backprojection_equals_n_times_the_images():
    vol, ops = _c5_map()
    rotations = random_rotations(600, torch.Generator().manual_seed(4), torch.float64).numpy()
    particles, shifts = _simulate(vol, rotations, noise=3.0, seed=5)
    few = np.arange(120)  # 600 / 5
    sym_few = backproject(particles, rotations, shifts, indices=few, batch_size=64, operators=ops)
    plain_few = backproject(particles, rotations, shifts, indices=few, batch_size=64)
    plain_all = backproject(particles, rotations, shifts, batch_size=64)
    c_sym, c_few, c_all = _corr(sym_few, vol), _corr(plain_few, vol), _corr(plain_all, vol)
    assert c_sym > c_few + 0.05  # the mates add information
    assert abs(c_sym - c_all) < 0.03, (c_sym, c_all)  # as much as 5× the images
    for g in ops[1:]:  # and the map obeys V(g·p) = V(p)
        assert _corr(rotate_volume(sym_few, g, order=1), sym_few) > 0.97
    assert _corr(rotate_volume(plain_few, ops[1], order=1), plain_few) < _corr(
        rotate_volume(sym_few, ops[1], order=1), sym_few
    )


def test_imposed_volume_slices_alike_at_a_pose_and_its_mates():
    box = 32
    vol = torch.as_tensor(_blob_volume(box, seed=7))
    ops = group_operators("D2")
    volume = HartleyVolume(box, torch.zeros(box, box, box), operators=ops)
    volume.set_from_real_space(vol)
    plain = HartleyVolume(box, torch.zeros(box, box, box))
    plain.set_from_real_space(vol)
    r = random_rotations(3, torch.Generator().manual_seed(8))
    axis = torch.arange(-8.0, 8)
    k2 = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    mates = torch.as_tensor(ops, dtype=torch.float32)[:, None] @ r[None]  # (4, 3, 3, 3): g·R
    sym = volume.slices(mates, k2)
    assert torch.allclose(sym, sym[:1].expand_as(sym), atol=1e-4 * float(sym.abs().max()))
    unsym = plain.slices(mates, k2)
    assert not torch.allclose(unsym, unsym[:1].expand_as(unsym), atol=1e-2 * float(unsym.abs().max()))
    expected = symmetrize_grid(hartley_centered(vol, 3), ops)  # the mean over the group, D2 exact on the grid
    assert torch.allclose(volume.hartley(), expected, atol=1e-4 * float(expected.abs().max()))


def test_the_symmetrised_grid_follows_every_map_update():
    box = 24
    ops = group_operators("C4")
    volume = HartleyVolume(box, torch.zeros(box, box, box), copies=2, operators=ops)
    first, second = (torch.as_tensor(_blob_volume(box, seed=s)) for s in (1, 2))
    with torch.no_grad():
        volume.set_from_real_space(first)
        read_first = volume.hartley(0).clone()
        assert volume.hartley(0) is volume.hartley(0)  # kept between reads of an unchanged map
        volume.set_from_real_space(second, copy=1)
        assert torch.equal(volume.hartley(0), read_first)
        assert not torch.allclose(volume.hartley(1), read_first)  # each copy its own
        volume.set_from_real_space(second, copy=0)
        assert not torch.allclose(volume.hartley(0), read_first)  # a new map is read anew
    expected = symmetrize_grid(hartley_centered(second, 3), ops)
    assert torch.allclose(volume.hartley(0), expected, atol=1e-4 * float(expected.abs().max()))
