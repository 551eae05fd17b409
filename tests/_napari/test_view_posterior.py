"""The HEALPix view posterior: grid, rotations per view, normalisation and where its mode lands."""

import healpy
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_cryospin.engine.posterior import (
    healpix_view_grid,
    rotations_for_views,
    view_log_posterior,
    view_pixels,
)


def _peaked_score(r0: torch.Tensor, kappa: float):
    """Negative log-likelihood kappa·(3 − tr(R0ᵀR)), sharpest at R0."""

    def score(rotations: torch.Tensor) -> torch.Tensor:
        trace = torch.einsum("ij,bij->b", r0.to(rotations), rotations)
        return kappa * (3.0 - trace)

    return score


def test_grid_is_unit_vectors_in_ring_order():
    grid = healpix_view_grid(4)
    assert grid.shape == (192, 3)
    np.testing.assert_allclose(np.linalg.norm(grid, axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(healpy.vec2pix(4, *grid.T), np.arange(192))


def test_rotations_have_the_view_as_column_2_and_uniform_inplane_steps():
    directions = healpix_view_grid(2)
    rotations = rotations_for_views(directions, 8)
    assert rotations.shape == (48, 8, 3, 3)
    r = rotations.numpy()
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r[..., :, 2], np.broadcast_to(directions[:, None], (48, 8, 3)), atol=1e-12)
    step = np.einsum("vkij,vkij->vk", r[:, :-1], r[:, 1:])  # tr(AᵀB) = 1 + 2 cos θ
    np.testing.assert_allclose(step, 1 + 2 * np.cos(2 * np.pi / 8), atol=1e-12)


def test_view_pixels_reads_column_2():
    rotations = Rotation.random(50, random_state=1).as_matrix()
    views = rotations[:, :, 2]
    np.testing.assert_array_equal(view_pixels(rotations, 8), healpy.vec2pix(8, *views.T))
    np.testing.assert_array_equal(view_pixels(torch.as_tensor(rotations), 8), healpy.vec2pix(8, *views.T))


@pytest.mark.parametrize("pixel", [0, 300, 767])
def test_mode_is_the_pixel_holding_the_true_view(pixel):
    on_grid = rotations_for_views(healpix_view_grid(8)[pixel : pixel + 1], 24)[0, 5]
    nudge = torch.as_tensor(Rotation.from_rotvec([0.01, -0.012, 0.008]).as_matrix())
    r0 = on_grid @ nudge
    log_post = view_log_posterior(_peaked_score(r0, kappa=50.0), nside=8, n_inplane=24, batch=1000)
    assert log_post.shape == (768,)
    assert int(np.argmax(log_post)) == int(view_pixels(r0[None], 8)[0]) == pixel


def test_posterior_is_normalised_and_temperature_flattens_it():
    r0 = torch.as_tensor(Rotation.from_euler("ZYZ", [30, 60, 10], degrees=True).as_matrix())
    sharp = view_log_posterior(_peaked_score(r0, 20.0), nside=4, n_inplane=12)
    flat = view_log_posterior(_peaked_score(r0, 20.0), nside=4, n_inplane=12, temperature=10.0)
    for log_post in (sharp, flat):
        assert np.log(np.exp(log_post).sum()) == pytest.approx(0.0, abs=1e-9)
    assert flat.max() < sharp.max()
    assert np.argmax(flat) == np.argmax(sharp)


def test_batching_does_not_change_the_result():
    r0 = torch.as_tensor(Rotation.from_euler("ZYZ", [-70, 120, 40], degrees=True).as_matrix())
    whole = view_log_posterior(_peaked_score(r0, 5.0), nside=4, n_inplane=6, batch=10_000)
    pieces = view_log_posterior(_peaked_score(r0, 5.0), nside=4, n_inplane=6, batch=7)
    np.testing.assert_allclose(whole, pieces, atol=1e-6)
