"""Map alignment on a pseudo-symmetric particle: the right mate, not the first coarse basin."""

from __future__ import annotations

import numpy as np
import torch

from napari_cryospin.geometry.rotations import axis_angle_to_matrix, geodesic_distance, random_rotations
from napari_cryospin.metrics.alignment import align_maps, register_maps, rotate_volume


def _blob(box: int, centre_xyz: tuple[float, float, float], sigma: float) -> np.ndarray:
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    cx, cy, cz = centre_xyz
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))


def _propeller(box: int = 32) -> np.ndarray:
    """Six identical chiral lobes around z (an exact C6 ring) and one small marker that breaks it."""
    vol = np.zeros((box,) * 3)
    for i in range(6):
        a, b = np.deg2rad(60 * i), np.deg2rad(60 * i + 25)
        vol += _blob(box, (8 * np.cos(a), 8 * np.sin(a), -1.5), 1.8)
        vol += 0.7 * _blob(box, (9 * np.cos(b), 9 * np.sin(b), 1.5), 1.5)
    return vol + 0.8 * _blob(box, (3.0, -2.0, 6.0), 1.6)


def test_halves_of_a_pseudo_symmetric_ring_are_aligned_at_the_marker_not_at_a_mate():
    """Every 60° turn about the ring's axis fits the coarse, low-passed maps about equally well; only the
    marker tells them apart. The alignment must bring the turned copy back to the original frame."""
    ref = _propeller()
    rng = np.random.default_rng(3)
    errors = []
    for q in random_rotations(2, torch.Generator().manual_seed(5)).double().numpy():
        moved = rotate_volume(ref, q) + 0.05 * rng.standard_normal(ref.shape)
        change = align_maps(moved, ref + 0.05 * rng.standard_normal(ref.shape), seed=1)
        assert not change.flip
        # aligned(p) = moved(M·p) = ref(Q·M·p), so the right M is Qᵀ; a ring mate is 60° or more away
        error = np.rad2deg(
            float(geodesic_distance(torch.from_numpy(change.rotation)[None], torch.from_numpy(q.T)[None])[0])
        )
        errors.append(error)
    assert max(errors) < 10, errors


def test_registration_takes_out_a_small_rotation_between_halves():
    """Each half refines its own orientation; a 2.5° drift of half B is measured and undone."""
    ref = _propeller()
    q = axis_angle_to_matrix(torch.tensor([[0.3, -0.5, 0.8]]) * np.deg2rad(2.5) / np.sqrt(0.98))[0]
    drifted = rotate_volume(ref, q.double().numpy())
    change = register_maps(drifted, ref, seed=0)
    error = np.rad2deg(
        float(geodesic_distance(torch.from_numpy(change.rotation)[None], q.T.double()[None])[0])
    )
    assert error < 0.5
    assert np.corrcoef(change.aligned.ravel(), ref.ravel())[0, 1] > 0.99
