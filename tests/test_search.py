"""Global pose exploration: grid search equals brute force and finds true poses against a known-pose map."""

import numpy as np
import pytest
import torch

from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.model.likelihood import shift_grid, squared_error
from napari_cryospin.model.search import SoftAssignment, forget, grid_search, insert_weighted, so3_grid
from napari_cryospin.physics.reconstruction import solve_map


def _engine(tiny_dataset, tmp_path, **kw) -> Engine:
    cfg = dict(particles=str(tiny_dataset / "particles.star"), out=str(tmp_path / "run"), device="cpu")
    cfg.update(kw)
    eng = Engine(RunConfig(**cfg))
    eng._build()
    return eng


def test_so3_grid_is_rotations_spread_over_views():
    grid = so3_grid(1, 4).double()
    assert grid.shape == (48, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand(48, 3, 3)
    assert torch.allclose(grid @ grid.transpose(-1, -2), eye, atol=1e-6)
    assert torch.allclose(torch.linalg.det(grid), torch.ones(48, dtype=torch.float64), atol=1e-6)
    assert len(torch.unique(grid[:, :, 2].round(decimals=4), dim=0)) == 12  # 12 views × 4 in-plane


@pytest.mark.parametrize("max_table", [1 << 24, 100])  # one pass, and many rotation chunks
def test_grid_search_equals_brute_force(tiny_dataset, tmp_path, monkeypatch, max_table):
    monkeypatch.setattr("napari_cryospin.model.search.MAX_TABLE", max_table)
    eng = _engine(tiny_dataset, tmp_path)
    batch = eng.model.batch(np.arange(5))
    grid = so3_grid(1, 4)
    offsets = shift_grid(1.0)
    centres = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    n = eng.model.disk.count(6)
    found = grid_search(eng.model.volume, batch, grid, centres, offsets, eng.model.disk, n, top_k=4)
    shifts = centres[:, None, None] + offsets[None, :, None]  # (B, S, G, 2)
    rots = grid[None, None].expand(5, len(offsets), -1, -1, -1)
    shifts = shifts.expand(-1, -1, len(grid), -1)
    brute = squared_error(eng.model.volume, batch, rots, shifts, eng.model.disk, n).reshape(5, -1)
    best = brute.sort(dim=1).values[:, :4]
    assert torch.allclose(found.errors, best, rtol=1e-4, atol=1e-6)
    again = squared_error(eng.model.volume, batch, found.rotations, found.shifts, eng.model.disk, n)
    assert torch.allclose(again, found.errors, rtol=1e-4, atol=1e-6)
    assert torch.allclose(found.weights.sum(1), torch.ones(5))
    assert torch.all(found.weights[:, :-1] >= found.weights[:, 1:])


def test_running_sums_forget_old_batches(tiny_dataset, tmp_path):
    eng = _engine(tiny_dataset, tmp_path)
    n = eng.model.disk.count(5)
    sums = []
    for start in (0, 8):
        batch = eng.model.batch(np.arange(start, start + 8))
        grid, offsets = so3_grid(1, 4), shift_grid(1.0)
        found = grid_search(eng.model.volume, batch, grid, torch.zeros(8, 2), offsets, eng.model.disk, n, 2)
        sums.append(insert_weighted(batch, found, eng.model.disk, n))
    mixed = forget(forget(None, sums[0], 0.25), sums[1], 0.25)
    assert torch.allclose(mixed.den, 0.75 * sums[0].den + sums[1].den)  # a decayed sum, not a mean
    steady = None
    for _ in range(200):
        steady = forget(steady, sums[0], 0.25)
    assert torch.allclose(steady.den, 4 * sums[0].den, rtol=1e-4)  # 1/rate batches' worth
    assert sums[0].den.sum() > 0 and torch.all(sums[0].den >= 0)


def _truth_assignment(truth, idx, device) -> SoftAssignment:
    """The true poses of particles ``idx`` as a one-candidate soft assignment."""
    rot = torch.as_tensor(truth.rotations[idx], dtype=torch.float32, device=device)[:, None]
    shift = torch.as_tensor(truth.shifts[idx], dtype=torch.float32, device=device)[:, None]
    ones = torch.ones(len(idx), 1, device=device)
    return SoftAssignment(rot, shift, ones, ones)


def test_grid_search_finds_true_poses_against_a_known_pose_map(tiny_dataset, tmp_path):
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.metrics.alignment import align_rotations

    truth = load_particles(tiny_dataset / "truth.star")
    eng = _engine(tiny_dataset, tmp_path)
    idx = np.arange(eng.model.n)
    batch = eng.model.batch(idx)
    n = eng.model.disk.count(10)
    sums = insert_weighted(batch, _truth_assignment(truth, idx, eng.device), eng.model.disk, n)
    eng.model.volume.set_from_real_space(torch.from_numpy(solve_map(sums)))
    medians = []
    for grid in eng.model.grids:
        found = grid_search(
            eng.model.volume,
            batch,
            grid,
            torch.zeros(eng.model.n, 2),
            eng.model.offsets,
            eng.model.disk,
            n,
            1,
        )
        error = align_rotations(found.rotations[:, 0].numpy(), truth.rotations)
        medians.append(error.median)
    # The coarse grid is ~30° apart, so its nearest pose is up to ~20° off (random poses: ~120°); the fine
    # grid (~15° apart) must do better.
    assert medians[0] < 25.0 and medians[1] < medians[0]
    # No global rotation or hand change: the map was built in the truth's frame.
    assert not error.flip
    assert np.degrees(np.arccos((np.trace(error.rotation) - 1) / 2)) < 5.0


def test_exploration_fits_the_images_better_as_it_goes(tiny_dataset, tmp_path):
    eng = _engine(tiny_dataset, tmp_path, explore_epochs=3, epochs=3)
    losses = []
    for epoch in range(3):
        eng.model.epoch = epoch
        perm = np.random.default_rng(epoch).permutation(eng.model.n)
        errs = []
        for pos in range(0, eng.model.n, eng.model.schedule.explore_batch):
            idx = np.sort(perm[pos : pos + eng.model.schedule.explore_batch])
            errs.append(eng.stages.exploring_step(idx, eng.model.disk.count(6)))
        losses.append(np.mean(errs))
    assert losses[-1] < losses[0]
    assert torch.all(eng.model.best_head == eng.config.heads)  # every particle holds a kept pose
    assert eng.model.volume.real_space().sum() > 0


def test_global_research_rescues_poses_in_a_wrong_basin(tiny_dataset, tmp_path):
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.geometry.rotations import geodesic_distance, random_rotations

    truth = load_particles(tiny_dataset / "truth.star")
    eng = _engine(tiny_dataset, tmp_path)
    idx = np.arange(eng.model.n)
    batch = eng.model.batch(idx)
    sums = insert_weighted(
        batch, _truth_assignment(truth, idx, eng.device), eng.model.disk, eng.model.disk.count(10)
    )
    eng.model.volume.set_from_real_space(torch.from_numpy(solve_map(sums)))
    lost = idx % 4 == 0  # a quarter of the particles start from random rotations
    start = torch.as_tensor(truth.rotations, dtype=torch.float32)
    start[lost] = random_rotations(int(lost.sum()), generator=torch.Generator().manual_seed(5))
    eng.model.best_rot, eng.model.best_shift = start, torch.as_tensor(truth.shifts, dtype=torch.float32)
    eng.stages.switch_to_decoding("test")
    eng.stages.research_poses()
    rot, _ = eng.model.current_poses()
    true = torch.as_tensor(truth.rotations, dtype=torch.float64)
    error = np.degrees(geodesic_distance(true, torch.as_tensor(rot, dtype=torch.float64)).numpy())
    assert np.median(error[lost]) < 25.0  # random rotations: ~120°
    assert np.median(error[~lost]) < 5.0  # the right ones stay right (or move to a grid pose next to it)
    assert 0.2 < eng.model.research_moved < 0.6


def test_research_maps_are_the_backprojection_of_the_current_poses(tiny_dataset, tmp_path):
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.engine.research import maps_from_poses
    from napari_cryospin.metrics.fsc import fsc

    truth = load_particles(tiny_dataset / "truth.star")
    eng = _engine(tiny_dataset, tmp_path)
    m = eng.model
    rot = torch.as_tensor(truth.rotations, dtype=torch.float32)
    shift = torch.as_tensor(truth.shifts, dtype=torch.float32)
    eng.stages.switch_to_decoding("test")
    m.poses.reseed(torch.arange(m.n), rot, shift)  # the true poses, in both halves
    before = [m.volume.real_space(c).cpu().numpy() for c in (0, 1)]
    m.epoch = m.schedule.epochs - 1  # the full radius: the maps are filled out to it
    maps_from_poses(m, eng.stages.dp)
    after = [m.volume.real_space(c).cpu().numpy() for c in (0, 1)]
    true_map, voxel = read_volume(tiny_dataset / "truth_volume.mrc")
    for c in (0, 1):  # each half now holds its particles' known-pose map, not the start
        now = np.mean(fsc(after[c], true_map, voxel)[1][1:8])
        assert now > 0.9
        assert np.mean(fsc(before[c], true_map, voxel)[1][1:8]) < now - 0.3
    assert not np.allclose(after[0], after[1])  # each half from its own particles


def test_research_maps_held_out_leave_exactly_their_subset_out(tiny_dataset, tmp_path):
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.engine.research import HELD_OUT, held_out_subset, maps_from_poses

    truth = load_particles(tiny_dataset / "truth.star")
    eng = _engine(tiny_dataset, tmp_path)
    m = eng.model
    eng.stages.switch_to_decoding("test")
    m.poses.reseed(
        torch.arange(m.n),
        torch.as_tensor(truth.rotations, dtype=torch.float32),
        torch.as_tensor(truth.shifts, dtype=torch.float32),
    )
    maps = maps_from_poses(m, eng.stages.dp)
    full = [m.volume.real_space(c).cpu().numpy() for c in (0, 1)]
    k = 3
    maps.install(m, without=k)
    for c in (0, 1):  # the map a subset is searched against: its half's other particles alone
        others = np.flatnonzero((m.halves_np == c) & (held_out_subset(np.arange(m.n)) != k))
        batch = m.batch(others)
        rot, shift = m.poses(batch.idx)
        at = SoftAssignment(
            rot[:, None], shift[:, None], rot.new_ones(len(others), 1), rot.new_zeros(len(others), 1)
        )
        expected = solve_map(insert_weighted(batch, at, m.disk, m.n_points()), prior=m.prior)
        held = m.volume.real_space(c).cpu().numpy()
        np.testing.assert_allclose(held, expected, atol=1e-4 * np.abs(expected).max())
        assert not np.allclose(held, full[c], atol=1e-3 * np.abs(full[c]).max())
    assert HELD_OUT > 1 and m.n // HELD_OUT > 0


def test_wide_search_finds_poses_beyond_the_local_shift_window(tiny_dataset, tmp_path):
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.engine.research import wide_search
    from napari_cryospin.geometry.rotations import geodesic_distance, random_rotations

    truth = load_particles(tiny_dataset / "truth.star")
    eng = _engine(tiny_dataset, tmp_path)
    m = eng.model
    idx = np.arange(40)
    batch = m.batch(idx)
    sums = insert_weighted(batch, _truth_assignment(truth, idx, eng.device), m.disk, m.disk.count(10))
    m.volume.set_from_real_space(torch.from_numpy(solve_map(sums)))
    wrong = random_rotations(40, generator=torch.Generator().manual_seed(2))
    far = torch.as_tensor(truth.shifts[idx], dtype=torch.float32) + 3.0  # beyond the ±1.5 px local window
    now, err, rot, shift = wide_search(m, batch, wrong, far, m.disk.count(6), m.disk.count(10))
    true = torch.as_tensor(truth.rotations[idx], dtype=torch.float32)
    error = torch.rad2deg(geodesic_distance(rot, true))
    assert (err < now).float().mean() > 0.9  # the wrong poses are beaten
    assert error.median() < 5.0
    assert (shift - torch.as_tensor(truth.shifts[idx])).norm(dim=1).median() < 1.0


def test_a_research_round_after_the_first_only_when_the_last_moved_particles_to_another_basin(
    tiny_dataset, tmp_path
):
    eng = _engine(tiny_dataset, tmp_path, epochs=20, explore_epochs=8)
    m = eng.model
    eng.stages.switch_to_decoding("test")
    first, second, *_ = m.schedule.research_epochs()
    m.epoch = first - 1
    assert not eng.stages.research_due()
    m.epoch = first
    assert eng.stages.research_due()
    m.epoch, m.research_far = second, 0.002
    assert not eng.stages.research_due()
    m.research_far = 0.05
    assert eng.stages.research_due()


def test_shift_prior_adds_its_gaussian_term_to_every_candidate(tiny_dataset, tmp_path):
    eng = _engine(tiny_dataset, tmp_path)
    batch = eng.model.batch(np.arange(4))
    grid, offsets, n = so3_grid(1, 4), shift_grid(2.0), eng.model.disk.count(6)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, -7.0], [3.0, 3.0]])
    free = grid_search(
        eng.model.volume, batch, grid, centres, offsets, eng.model.disk, n, top_k=len(grid) * len(offsets)
    )
    sigma = 2.0
    held = grid_search(
        eng.model.volume, batch, grid, centres, offsets, eng.model.disk, n, top_k=4, shift_sigma=sigma
    )
    power = (batch.spectrum[:, :n].abs() ** 2).sum(-1) / n  # the prior's noise estimate per image
    expect = free.errors + power[:, None] * (free.shifts**2).sum(-1) / (n * sigma**2)
    assert torch.allclose(held.errors, expect.sort(dim=1).values[:, :4], rtol=1e-4, atol=1e-6)
    tight = grid_search(
        eng.model.volume, batch, grid, centres, offsets, eng.model.disk, n, top_k=1, shift_sigma=1e-3
    )
    nearest = centres + offsets[((centres[:, None] + offsets[None]) ** 2).sum(-1).argmin(1)]
    assert torch.equal(tight.shifts[:, 0], nearest)  # a tight prior picks the shift nearest the centre


def test_exploration_follows_each_last_shift_but_keeps_the_box_centre_in_its_window(tiny_dataset, tmp_path):
    eng = _engine(tiny_dataset, tmp_path)
    radius = eng.model.schedule.shift_search
    last = torch.tensor([[1.0, -1.0], [3 * radius, 0.0], [0.0, -2 * radius], [radius, radius]])
    eng.model.best_shift[:4] = last
    centres = eng.stages.explore_centres(torch.arange(4))
    assert torch.equal(centres[0], last[0])  # inside the radius: followed as it is
    lengths = centres.norm(dim=-1)
    assert torch.all(lengths <= radius + 1e-5)  # so the box centre is always in the search window
    torch.testing.assert_close(lengths[1:], torch.full((3,), radius))  # pulled in along its own direction
    cosine = (centres * last).sum(-1) / (lengths * last.norm(dim=-1))
    torch.testing.assert_close(cosine, torch.ones(4))


def test_aligning_the_halves_is_not_counted_as_a_pose_change(tiny_dataset, tmp_path):
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.geometry.rotations import geodesic_distance
    from napari_cryospin.resources import bundled_map_path

    eng = _engine(tiny_dataset, tmp_path)
    assert eng.model.volume.copies == 2 and not eng.model.halves_aligned
    truth = load_particles(tiny_dataset / "truth.star")
    volume = torch.from_numpy(np.ascontiguousarray(read_volume(bundled_map_path(32))[0]))
    eng.model.volume.set_from_real_space(volume, copy=0)
    eng.model.volume.set_from_real_space(torch.rot90(volume, 1, (0, 2)).contiguous(), copy=1)  # B: 90° off
    eng.model.best_rot = torch.as_tensor(truth.rotations, dtype=torch.float32)
    eng.stages.prev_rot = eng.model.best_rot.clone()  # the poses at the last exploration epoch's end
    before = eng.model.best_rot.clone()
    eng.stages.align_halves()
    in_b = eng.model.halves.numpy() == 1
    moved = np.degrees(geodesic_distance(before.double(), eng.model.best_rot.double()).numpy())
    assert np.median(moved[in_b]) > 60 and np.all(moved[~in_b] < 1e-3)  # half B's frame did change
    change = np.degrees(geodesic_distance(eng.stages.prev_rot.double(), eng.model.best_rot.double()).numpy())
    assert np.all(change < 1e-3)  # but no particle's pose did, as the auto-switch measures it


def test_a_kept_slice_table_gives_the_search_the_same_poses(tiny_dataset, tmp_path, monkeypatch):
    eng = _engine(tiny_dataset, tmp_path)
    vol, disk = eng.model.volume, eng.model.disk
    batch, grid, n = eng.model.batch(np.arange(6)), so3_grid(1, 4), disk.count(6)
    calls = []
    slices = vol.slices
    monkeypatch.setattr(vol, "slices", lambda *a, **kw: calls.append(1) or slices(*a, **kw))

    def search():
        return grid_search(vol, batch, grid, torch.zeros(6, 2), shift_grid(1.0), disk, n, top_k=3)

    found = [search()]
    assert len(calls) == 1  # the whole grid at once, kept
    found.append(search())
    assert len(calls) == 1  # the same map: the kept table
    monkeypatch.setattr("napari_cryospin.model.volume.SLICE_TABLE_VALUES", 0)  # chunk by chunk
    found.append(search())
    assert len(calls) == 2
    for other in found[1:]:
        assert torch.allclose(other.errors, found[0].errors, rtol=1e-5, atol=1e-7)
        assert torch.equal(other.rotations, found[0].rotations)
