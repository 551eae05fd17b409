"""The Hartley volume decoder: a frozen map shares one grid between pose steps, and only inside the block; a
shared block gives every copy the same values and gradients as indexing one copy at a time."""

import torch

from napari_cryospin.model.volume import HartleyVolume
from napari_cryospin.physics.fourier import frequency_grid_2d, hartley_centered, ihartley_centered


def _volume() -> HartleyVolume:
    torch.manual_seed(0)
    v = HartleyVolume(8, torch.zeros(8, 8, 8), copies=2)
    with torch.no_grad():
        v.mantissa.normal_()
        v.exponent.normal_(std=0.1)
    return v


def test_frozen_slices_match_and_pass_gradient_to_poses_only():
    v = _volume()
    k = frequency_grid_2d(8).reshape(-1, 2)[:20]
    rot = torch.linalg.matrix_exp(torch.tensor([[[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]]]))
    rot.requires_grad_(True)
    live = v.slices(rot, k, 1)
    with v.frozen():
        frozen = v.slices(rot, k, 1, detach=True)
        frozen.pow(2).sum().backward()
    assert torch.allclose(live, frozen)
    assert rot.grad is not None and rot.grad.abs().sum() > 0
    assert v.mantissa.grad is None and v.exponent.grad is None


def test_a_map_changed_after_the_frozen_block_is_seen():
    v = _volume()
    k = frequency_grid_2d(8).reshape(-1, 2)[:20]
    rot = torch.eye(3)[None]
    with v.frozen():
        before = v.slices(rot, k, 0, detach=True)
    with torch.no_grad():
        v.mantissa[0] += 1.0
    with v.frozen():
        after = v.slices(rot, k, 0, detach=True)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, v.slices(rot, k, 0).detach())


def test_shared_grids_give_the_same_slices_and_gradients_as_one_copy_at_a_time():
    k = frequency_grid_2d(8).reshape(-1, 2)[:20]
    rot = torch.linalg.matrix_exp(torch.tensor([[[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]]]))
    results = []
    for shared in (False, True):
        v = _volume()
        if shared:
            with v.shared():
                out = [v.slices(rot, k, c) for c in (0, 1)]
        else:
            out = [v.slices(rot, k, c) for c in (0, 1)]
        (out[0].pow(2).sum() + 3 * out[1].sum()).backward()
        results.append((out, v.mantissa.grad, v.exponent.grad))
        assert v._shared is None  # only inside the block
    (one, m1, e1), (both, m2, e2) = results
    for a, b in zip(one, both, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(e1, e2)
    assert m1[1].abs().sum() > 0 and e1[0].abs().sum() > 0


def test_a_weighted_frozen_block_filters_the_pose_slices_and_not_the_map_step():
    v = _volume()
    k = frequency_grid_2d(8).reshape(-1, 2)[:20]
    rot = torch.linalg.matrix_exp(torch.tensor([[[0.0, 0.2, -0.1], [-0.2, 0.0, 0.3], [0.1, -0.3, 0.0]]]))
    weight = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(1))
    filtered = HartleyVolume(8, torch.zeros(8, 8, 8))
    with torch.no_grad():
        filtered.mantissa[0] = v.hartley(0) * weight
    with v.frozen(weight):
        posed = v.slices(rot, k, 0, detach=True)
        live = v.slices(rot, k, 0)
    assert torch.allclose(posed, filtered.slices(rot, k, 0), atol=1e-5)
    assert torch.allclose(live, v.slices(rot, k, 0))
    assert not torch.allclose(posed, live, atol=1e-3)


def test_a_masked_frozen_block_shows_the_poses_the_masked_map_and_the_map_step_the_whole():
    v = _volume()
    k = frequency_grid_2d(8).reshape(-1, 2)[:20]
    rot = torch.linalg.matrix_exp(torch.tensor([[[0.0, 0.1, 0.3], [-0.1, 0.0, -0.2], [-0.3, 0.2, 0.0]]]))
    mask = torch.zeros(8, 8, 8)
    mask[2:6, 2:6, 2:6] = 1.0  # keeps the centre, drops the rest
    weight = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = HartleyVolume(8, torch.zeros(8, 8, 8))
    with torch.no_grad():
        expected.mantissa[0] = hartley_centered(ihartley_centered(v.hartley(1), 3) * mask, 3) * weight
    with v.frozen(weight, mask):
        posed = v.slices(rot, k, 1, detach=True)
        live = v.slices(rot, k, 1)
    assert torch.allclose(posed, expected.slices(rot, k, 0), atol=1e-5)
    assert torch.allclose(live, v.slices(rot, k, 1))
    with v.frozen(weight):
        unmasked = v.slices(rot, k, 1, detach=True)
    assert not torch.allclose(posed, unmasked, atol=1e-3)


def test_a_grid_slice_table_is_kept_while_the_map_is_unchanged_and_remade_when_it_changes():
    from napari_cryospin.model.search import so3_grid

    v = _volume()
    grid, k = so3_grid(1, 4), frequency_grid_2d(8).reshape(-1, 2)[:20]
    assert v.grid_slices(grid, k, 0) is None  # autograd on: never kept
    with torch.no_grad():
        table = v.grid_slices(grid, k, 0)
        assert torch.allclose(table, v.slices(grid, k, 0))
        assert v.grid_slices(grid, k[:20], 0) is table  # another view of the same frequencies
        assert v.grid_slices(grid, k[:19], 0) is not table  # other frequencies: a new table
        table = v.grid_slices(grid, k, 0)
        other = v.grid_slices(grid, k, 1)
        assert torch.allclose(other, v.slices(grid, k, 1)) and not torch.allclose(other, table)
        v.set_from_real_space(torch.randn(8, 8, 8), copy=0)  # a new map: the table follows it
        remade = v.grid_slices(grid, k, 0)
        assert torch.allclose(remade, v.slices(grid, k, 0)) and not torch.allclose(remade, table)
        v.mantissa[0] *= 2.0  # an in-place step, as Adam's
        assert torch.allclose(v.grid_slices(grid, k, 0), 2 * remade, rtol=1e-5, atol=1e-6)
        unfiltered, other = v.grid_slices(grid, k, 0), v.grid_slices(grid, k, 1)
        assert torch.allclose(unfiltered, 2 * remade, rtol=1e-5, atol=1e-6)
        for weight in (torch.rand(8, 8, 8), torch.rand(8, 8, 8)):
            with v.frozen(weight):  # what a frozen block reads is filtered: its table too, one per block
                filtered = v.grid_slices(grid, k, 0)
                assert torch.allclose(filtered, v.slices(grid, k, 0, detach=True))
                assert v.grid_slices(grid, k, 0) is filtered
            assert v.grid_slices(grid, k, 1) is other  # a block leaves the tables outside it alone
        assert torch.allclose(v.grid_slices(grid, k, 0), unfiltered)
