"""Symmetry-aware pose errors: the mate convention against the forward model; the alignment on C2 cases."""

from __future__ import annotations

import numpy as np
import torch

from napari_cryospin.geometry.rotations import axis_angle_to_matrix, random_rotations
from napari_cryospin.metrics.alignment import MIRROR, align_rotations, rotate_volume
from napari_cryospin.metrics.symmetry import align_rotations_symmetric
from napari_cryospin.physics.fourier import fftn_centered, frequency_grid_2d
from napari_cryospin.physics.slicing import extract_slices


def _rotations(n: int, seed: int) -> np.ndarray:
    return random_rotations(n, torch.Generator().manual_seed(seed), torch.float64).numpy()


def _c2(axis) -> np.ndarray:
    axis = np.asarray(axis, np.float64)
    return axis_angle_to_matrix(torch.as_tensor(np.pi * axis / np.linalg.norm(axis))).numpy()


def _noisy(r: np.ndarray, deg: float, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=(len(r), 3)) * np.radians(deg) / np.sqrt(3)
    return axis_angle_to_matrix(torch.as_tensor(w)).numpy() @ r


def test_a_symmetric_map_projects_alike_at_r_and_s_times_r():
    box = 24
    rng = np.random.default_rng(0)
    vol = np.zeros((box, box, box))
    z, y, x = np.meshgrid(*[np.arange(box) - box // 2] * 3, indexing="ij")
    for _ in range(6):  # Gaussian blobs inside a ball, then made exactly C2 about (1, 1, 0)
        c = rng.uniform(-6, 6, size=3)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 6.0)
    vol *= x**2 + y**2 + z**2 < 10**2
    s = _c2([1, 1, 0])  # maps the grid onto itself, so rotate_volume is exact here
    sym = vol + rotate_volume(vol, s, order=1)
    assert np.allclose(rotate_volume(sym, s, order=1), sym, atol=1e-5)
    spectrum = fftn_centered(torch.as_tensor(sym), 3)
    k2 = frequency_grid_2d(box).reshape(-1, 2).to(torch.float64)
    k2 = k2[k2.norm(dim=1) < box // 2 - 2]  # inside the grid in every direction
    r = torch.as_tensor(_rotations(4, 1))
    s_t = torch.as_tensor(s)
    at_r = extract_slices(spectrum, r, k2)
    at_sr = extract_slices(spectrum, s_t @ r, k2)
    at_rs = extract_slices(spectrum, r @ s_t, k2)
    scale = at_r.norm()
    assert (at_sr - at_r).norm() < 1e-3 * scale
    assert (at_rs - at_r).norm() > 0.3 * scale  # the other side is not a mate


def test_symmetric_alignment_forgives_the_c2_mate_and_nothing_else():
    n = 400
    truth = _rotations(n, 2)
    s = _c2([0.3, -0.5, 0.8])
    a = _rotations(1, 3)[0]
    mate = np.random.default_rng(4).random(n) < 0.4
    est = np.where(mate[:, None, None], s @ truth, truth)
    est = _noisy(a @ est, 1.0, 5)
    plain = align_rotations(est, truth)
    sym = align_rotations_symmetric(est, truth, s[None])
    assert plain.mean > 40.0
    assert sym.median < 1.5 and sym.mean < 2.0 and not sym.flip
    assert np.degrees(np.arccos(np.clip((np.trace(sym.rotation.T @ a) - 1) / 2, -1, 1))) < 0.5
    # a wrong operator does not hide the mates' errors
    wrong = align_rotations_symmetric(est, truth, _c2([1.0, 0.0, 0.0])[None])
    assert wrong.mean > 40.0


def test_symmetric_alignment_handles_the_other_hand():
    n = 300
    truth = _rotations(n, 6)
    s = _c2([0.0, 1.0, 1.0])
    a = _rotations(1, 7)[0]
    mate = np.random.default_rng(8).random(n) < 0.5
    g = np.where(mate[:, None, None], s @ truth, truth)
    est = _noisy(a @ MIRROR @ g @ MIRROR, 0.5, 9)
    sym = align_rotations_symmetric(est, truth, s[None])
    assert sym.flip and sym.median < 1.0


def test_without_operators_it_is_the_plain_alignment():
    truth = _rotations(200, 10)
    est = _noisy(_rotations(1, 11)[0] @ truth, 5.0, 12)
    plain = align_rotations(est, truth)
    sym = align_rotations_symmetric(est, truth, None)
    assert abs(plain.median - sym.median) < 1e-6 and abs(plain.mean - sym.mean) < 1e-6
    assert sym.flip == plain.flip
