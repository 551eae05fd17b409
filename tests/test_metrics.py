"""FSC, resolution at a threshold, soft mask, rotation alignment over both hands, shift errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryospin.geometry.rotations import axis_angle_to_matrix, random_rotations
from napari_cryospin.metrics.alignment import (
    MIRROR,
    FrameChange,
    align_rotations,
    poses_in_truth_frame,
    project_to_so3,
    shift_errors,
)
from napari_cryospin.metrics.fsc import fsc, resolution_at, soft_mask
from napari_cryospin.metrics.symmetry import align_rotations_symmetric
from napari_cryospin.metrics.translation import best_translation, translate, whole_voxel_translation


def _smooth_volume(box: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.fft.fftn(rng.standard_normal((box, box, box)))
    k = np.fft.fftfreq(box) * box
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.fft.ifftn(f * np.exp(-(kz**2 + ky**2 + kx**2) / 50)).real


def _rotations(n: int, seed: int) -> np.ndarray:
    return random_rotations(n, torch.Generator().manual_seed(seed), torch.float64).numpy()


def test_fsc_with_itself_is_one():
    vol = _smooth_volume()
    freq, values = fsc(vol, 3.0 * vol + 0.0, voxel_size=2.0)
    assert len(freq) == 17
    assert freq[-1] == pytest.approx(1 / 4.0)
    np.testing.assert_allclose(values[1:], 1.0, atol=1e-9)
    assert resolution_at(freq, values, 0.5) == pytest.approx(4.0)


def test_fsc_with_independent_noise_decays():
    rng = np.random.default_rng(1)
    vol = _smooth_volume()
    noise = 0.3 * vol.std()
    a = vol + noise * rng.standard_normal(vol.shape)
    b = vol + noise * rng.standard_normal(vol.shape)
    _, values = fsc(a, b, 1.0)
    assert values[1] > 0.95
    assert values[-1] < 0.2
    assert values[2] > values[8] > values[14]
    _, pure = fsc(rng.standard_normal(vol.shape), rng.standard_normal(vol.shape), 1.0)
    assert np.abs(pure[4:]).max() < 0.15


def test_fsc_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        fsc(np.zeros((8, 8, 8)), np.zeros((10, 10, 10)), 1.0)


def test_resolution_at_interpolates_first_crossing():
    freq = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    values = np.array([1.0, 0.9, 0.3, 0.6, 0.1])
    # 0.5 crossed between 0.1 (0.9) and 0.2 (0.3): 0.1 + 0.4/0.6·0.1; the later rise is ignored.
    assert resolution_at(freq, values, 0.5) == pytest.approx(1 / (0.1 + 0.1 * 0.4 / 0.6))
    assert resolution_at(freq, values, 0.05) == pytest.approx(1 / 0.4)


def test_soft_mask_profile():
    mask = soft_mask(32, radius=8, width=4)
    c = 16
    assert mask[c, c, c] == 1.0
    assert mask[c, c, c + 8] == 1.0
    assert mask[c, c, c + 10] == pytest.approx(0.5)
    assert mask[c, c, c + 12] == pytest.approx(0.0, abs=1e-7)
    assert mask[0, 0, 0] == 0.0


@pytest.mark.parametrize("flip", [False, True])
def test_align_rotations_exact(flip):
    r_gt = _rotations(200, 0)
    a = _rotations(1, 1)[0]
    g = MIRROR @ r_gt @ MIRROR if flip else r_gt
    result = align_rotations(a @ g, r_gt)
    assert result.flip is flip
    np.testing.assert_allclose(result.rotation, a, atol=1e-8)
    assert result.median < 1e-5
    assert result.mean < 1e-5
    assert result.errors_deg.shape == (200,)


@pytest.mark.parametrize("flip", [False, True])
def test_align_rotations_noisy_with_outliers(flip):
    """Small isotropic noise of known median angle, plus 30 % random poses, on either hand."""
    n = 2000
    r_gt = _rotations(n, 2)
    a = _rotations(1, 3)[0]
    g = MIRROR @ r_gt @ MIRROR if flip else r_gt
    sigma = np.radians(2.0)
    noise = axis_angle_to_matrix(
        torch.randn(n, 3, generator=torch.Generator().manual_seed(4)) * sigma
    ).numpy()
    r_est = a @ g @ noise
    outliers = np.arange(n) % 10 < 3
    r_est[outliers] = _rotations(int(outliers.sum()), 5)
    result = align_rotations(r_est, r_gt)
    assert result.flip is flip
    assert np.degrees(np.arccos((np.trace(result.rotation.T @ a) - 1) / 2)) < 0.3
    # The angle of a 3D Gaussian rotation vector (σ per axis) has median ≈ 1.538 σ (Maxwell).
    inlier_median = np.median(result.errors_deg[~outliers])
    assert inlier_median == pytest.approx(1.538 * 2.0, rel=0.06)
    assert result.median < 15.0


@pytest.mark.parametrize("flip", [False, True])
def test_poses_in_truth_frame_undo_global_rotation_hand_and_offset(flip):
    n = 300
    r_gt = _rotations(n, 7)
    a = _rotations(1, 8)[0]
    g = MIRROR @ r_gt @ MIRROR if flip else r_gt
    true_shifts = np.random.default_rng(9).uniform(-3, 3, (n, 2))
    offset = np.array([0.7, -1.2, 0.4])  # the estimate's map sits off the truth's origin by this (x, y, z)
    # Particles of a map moved by t carry the shifts ``FrameChange.poses`` gives them (a backprojection test).
    moved = FrameChange(np.eye(3), False, offset, np.zeros((2, 2, 2)))
    _, shifts = moved.poses(r_gt, true_shifts)
    result = align_rotations(a @ g, r_gt)
    rot, back = poses_in_truth_frame(result, a @ g, shifts, true_shifts)
    np.testing.assert_allclose(rot, r_gt, atol=1e-8)
    np.testing.assert_allclose(back, true_shifts, atol=1e-8)


def test_poses_in_truth_frame_offset_follows_each_particles_mate():
    """Half the particles posed at the C2 mate S·R: a map offset moves their images by (S·R)ᵀ·t, not Rᵀ·t."""
    n = 300
    r_gt = _rotations(n, 11)
    a = _rotations(1, 12)[0]
    s = axis_angle_to_matrix(torch.tensor([[0.0, np.pi, 0.0]], dtype=torch.float64)).numpy()[0]
    at_mate = np.arange(n) % 2 == 1
    posed = np.where(at_mate[:, None, None], s @ r_gt, r_gt)
    true_shifts = np.random.default_rng(13).uniform(-3, 3, (n, 2))
    offset = np.array([1.5, -0.8, 1.1])
    _, shifts = FrameChange(np.eye(3), False, offset, np.zeros((2, 2, 2))).poses(posed, true_shifts)
    result = align_rotations_symmetric(a @ posed, r_gt, s[None])
    assert result.median < 1e-4
    rot, back = poses_in_truth_frame(result, a @ posed, shifts, true_shifts)
    np.testing.assert_allclose(rot, posed, atol=1e-8)
    np.testing.assert_allclose(back, true_shifts, atol=1e-8)


def test_project_to_so3():
    a = _rotations(1, 6)[0]
    noisy = a + 0.01 * np.random.default_rng(0).standard_normal((3, 3))
    r = project_to_so3(noisy)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(r, a, atol=0.03)


def test_shift_errors():
    est = np.array([[1.0, 2.0], [0.0, 0.0]])
    gt = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(shift_errors(est, gt), [0.0, 5.0])
    with pytest.raises(ValueError, match="shift arrays"):
        shift_errors(est, gt[:1])


@pytest.mark.parametrize("t_xyz", [(0.3, -1.7, 0.45), (-0.5, 0.5, 2.0)])
def test_best_translation_recovers_a_sub_voxel_offset(t_xyz):
    vol = _smooth_volume(32, 3)
    noisy = translate(vol, np.array(t_xyz)) + 0.02 * np.random.default_rng(4).standard_normal(vol.shape)
    found = best_translation(vol, noisy)
    np.testing.assert_allclose(found, t_xyz, atol=0.05)
    assert np.abs(whole_voxel_translation(vol, noisy) - np.round(t_xyz)).max() <= 1
    # Moving the map by the found translation makes it match better than the whole-voxel estimate does.
    whole = translate(vol, whole_voxel_translation(vol, noisy))
    assert np.linalg.norm(translate(vol, found) - noisy) < 0.5 * np.linalg.norm(whole - noisy)
