"""Posteriors that agree with the pose: the refined sampler, and any particle of a saved run."""

import healpy
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from napari_cryospin.engine.posterior import (
    carry_to_views,
    healpix_view_grid,
    refined_view_posterior,
    view_log_posterior,
    view_pixels,
)
from napari_cryospin.engine.saved_run import SavedRun


def _sharp_score(r0: torch.Tensor, kappa: float):
    """Negative log-likelihood kappa·(3 − tr(R0ᵀR)): a peak a few degrees wide for kappa ~ 1e3."""

    def score(rotations: torch.Tensor) -> torch.Tensor:
        return kappa * (3.0 - torch.einsum("ij,bij->b", r0.to(rotations), rotations))

    return score


def test_carried_rotation_keeps_its_in_plane_angle_and_lands_on_the_view():
    r = torch.as_tensor(Rotation.random(3, random_state=1).as_matrix())
    views = torch.as_tensor(healpix_view_grid(2))
    carried = carry_to_views(r, views)
    np.testing.assert_allclose(carried[..., 2].numpy(), np.broadcast_to(views.numpy(), (3, 48, 3)), atol=1e-9)
    np.testing.assert_allclose(
        (carried.transpose(-1, -2) @ carried).numpy(), np.broadcast_to(np.eye(3), (3, 48, 3, 3)), atol=1e-9
    )
    near = carry_to_views(r, r[:, :, 2])  # carried onto its own view: unchanged
    np.testing.assert_allclose(near.diagonal(dim1=0, dim2=1).permute(2, 0, 1).numpy(), r.numpy(), atol=1e-9)


def test_refined_posterior_puts_a_sharp_peak_in_the_pose_pixel_where_the_grid_cannot():
    """A peak under 1° wide, off the grid in view and in-plane angle: only refinement finds its pixel."""
    hits_refined, hits_grid = 0, 0
    for seed in range(12):
        r0 = torch.as_tensor(Rotation.random(random_state=seed).as_matrix())
        pose_pixel = int(view_pixels(r0[None], 8)[0])
        head = torch.as_tensor(
            (Rotation.from_matrix(r0.numpy()) * Rotation.from_rotvec([0.05, -0.04, 0.06])).as_matrix()
        )
        refined, patch = refined_view_posterior(_sharp_score(r0, 1e4), head[None])
        grid = view_log_posterior(_sharp_score(r0, 1e4), nside=8, n_inplane=24)
        hits_refined += int(np.argmax(refined)) == pose_pixel
        hits_grid += int(np.argmax(grid)) == pose_pixel
        assert np.isclose(np.logaddexp.reduce(refined), 0.0)
        assert patch.nside == 32 and np.all(np.isfinite(patch.log_posterior))
        fine_mode = patch.pixels[np.argmax(patch.log_posterior)]
        assert (
            np.degrees(np.arccos(np.clip(np.dot(healpy.pix2vec(32, fine_mode), r0[:, 2].numpy()), -1, 1)))
            < 3.0
        )
    assert hits_refined == 12
    assert hits_grid < 12


def test_saved_run_shows_any_particle_with_heads_pose_and_path(finished_run):
    run = SavedRun(finished_run)
    assert run.n == 200 and run.model.poses is not None
    view = run.particle_view(7)
    assert view.index == 7 and view.labels == ["head 1", "head 2", "head 3", "kept", "pose"]
    assert view.winner == 4 and view.candidates.shape == (5, 3, 3)
    assert view.log_posterior.shape == (768,) and view.zoom is not None
    pixel = int(view_pixels(view.candidates[view.winner][None], 8)[0])
    # A 3-epoch run is far from converged, so the pose need not be the mode; its view is still a bright one.
    assert int((view.log_posterior > view.log_posterior[pixel]).sum()) < 0.05 * 768
    assert view.path.shape[1:] == (3, 3) and len(view.path) >= 1  # saved epochs of auto-decoding
    assert view.image.shape == view.projection.shape == (32, 32)


def test_confidence_is_the_margin_over_the_best_distinct_rival():
    from napari_cryospin.engine.particle_scores import pose_confidence

    errors = np.array([[1.0, 1.1, 1.01, 2.0], [1.0, 1.5, 1.2, 1.3]])
    distances = np.array([[40.0, 5.0, 90.0], [3.0, 2.0, 1.0]])  # the 1.01 rival is within 15°: the same pose
    margin = pose_confidence(errors, distances, n_points=100)
    assert np.isclose(margin[0], 0.1 * 100 / 2.0)  # the 1.1 rival at 40° is the best distinct one
    assert np.isnan(margin[1])  # every candidate agrees with the pose
