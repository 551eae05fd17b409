"""Rotations: representations agree with scipy's RELION ZYZ convention and the exp map is stable at 0."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_cryospin.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_matrix,
    geodesic_distance,
    matrix_to_axis_angle,
    matrix_to_euler,
    random_rotations,
    sixd_to_matrix,
)


def test_euler_matches_scipy_intrinsic_zyz():
    angles = np.array([[10.0, 40.0, -70.0], [200.0, 120.0, 33.0], [-45.0, 170.0, 300.0]])
    ours = euler_to_matrix(*torch.tensor(angles, dtype=torch.float64).T).numpy()
    ref = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_euler_round_trip_including_gimbal_lock():
    rots = torch.cat(
        [
            random_rotations(50, torch.Generator().manual_seed(1), torch.float64),
            euler_to_matrix(*torch.tensor([[30.0, 0.0, 20.0], [10.0, 180.0, 5.0]]).double().T),
        ]
    )
    back = euler_to_matrix(*matrix_to_euler(rots).T)
    assert torch.rad2deg(geodesic_distance(rots, back)).max() < 1e-6


def test_sixd_gives_proper_rotations():
    r = sixd_to_matrix(torch.randn(100, 6, generator=torch.Generator().manual_seed(0)))
    eye = torch.eye(3).expand(100, 3, 3)
    assert torch.allclose(r.transpose(-1, -2) @ r, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(100), atol=1e-5)


def test_axis_angle_matches_scipy_and_inverts():
    w = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = w / w.norm(dim=-1, keepdim=True) * torch.rand(200, 1, dtype=torch.float64) * 3.1
    ref = Rotation.from_rotvec(w.numpy()).as_matrix()
    np.testing.assert_allclose(axis_angle_to_matrix(w).numpy(), ref, atol=1e-10)
    np.testing.assert_allclose(matrix_to_axis_angle(axis_angle_to_matrix(w)).numpy(), w.numpy(), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_axis_angle_gradient_is_finite_at_zero(dtype):
    w = torch.zeros(4, 3, dtype=dtype, requires_grad=True)
    target = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    loss = ((axis_angle_to_matrix(w) - target) ** 2).sum()
    loss.backward()
    assert torch.isfinite(w.grad).all()
    # d/dω of Rodrigues at 0 is the skew generator: this loss pulls ω towards +z (a 90° turn about z).
    assert (w.grad[:, 2] < 0).all()


def test_geodesic_distance_is_the_rotation_angle():
    axis = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    for angle in (1e-7, 0.3, math.pi - 1e-6):
        r = axis_angle_to_matrix(axis * angle)
        d = geodesic_distance(torch.eye(3, dtype=torch.float64)[None], r)
        assert abs(float(d) - angle) < 1e-6


def test_random_rotations_are_uniform():
    r = random_rotations(20000, torch.Generator().manual_seed(4), torch.float64)
    # Under the Haar measure the view direction (column 2) is uniform on the sphere: mean ≈ 0,
    # and the rotation angle has mean π/2 + 2/π.
    assert r[:, :, 2].mean(0).abs().max() < 0.03
    angle = geodesic_distance(torch.eye(3, dtype=torch.float64).expand_as(r), r)
    assert abs(float(angle.mean()) - (math.pi / 2 + 2 / math.pi)) < 0.02
