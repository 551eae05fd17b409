"""Local refinement beyond the working box: its box rule, its search, and what it does to poses."""

import numpy as np
import pytest
import torch

from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine import local_refine
from napari_cryospin.engine.local_refine import best_local_poses, refine_locally, refinement_box
from napari_cryospin.engine.mates import AS_GOOD_NATS, MateCheck
from napari_cryospin.engine.research import ball
from napari_cryospin.engine.run_folder import RESULT_FILES
from napari_cryospin.geometry.rotations import axis_angle_to_matrix
from napari_cryospin.model.likelihood import FrequencyDisk, shift_grid
from napari_cryospin.physics.fourier import fftn_centered, hartley_centered
from napari_cryospin.physics.reconstruction import half_maps
from napari_cryospin.physics.shifts import centering_phase
from napari_cryospin.physics.slicing import extract_slices


def test_refinement_box_grows_with_the_resolution_up_to_the_stored_box():
    # maps of 64 voxels of 2 Å: 128 Å across; Nyquist at 1.25 × the resolution's frequency
    assert refinement_box(10.0, 2.0, 64, 32, 128) == 32  # 2.5 · 128 / 10 = 32: the working box suffices
    assert refinement_box(9.0, 2.0, 64, 32, 128) == 40  # 35.6, up to a multiple of 8
    assert refinement_box(5.0, 2.0, 64, 32, 128) == 64
    assert refinement_box(2.0, 2.0, 64, 32, 128) == 128  # never above the stored box
    assert refinement_box(50.0, 2.0, 64, 32, 128) == 32  # never below the working box


def test_best_local_poses_finds_the_turn_and_offset_an_image_was_displaced_by():
    box = 24
    g = torch.Generator().manual_seed(0)
    vol = torch.nn.functional.avg_pool3d(torch.randn(1, 1, box, box, box, generator=g), 3, 1, 1)[0, 0]
    disk = FrequencyDisk(box, 1.0, "cpu")
    k = disk.k
    n = 5
    truth = axis_angle_to_matrix(torch.randn(n, 3, generator=g))
    true_shift = torch.rand(n, 2, generator=g) * 2 - 1
    ctf = 0.5 + torch.rand(n, len(k), generator=g)
    centred = extract_slices(fftn_centered(vol, 3), truth, k) * ctf
    spectrum = centred * centering_phase(k / box, true_shift).conj()  # the particle displaced in its image
    turns = ball(2.0, 1, "cpu")
    offsets = shift_grid(1.0, 0.25)
    which_turn, which_offset = torch.tensor([3, 7, 0, 20, 48]), torch.tensor([0, 2, 5, 9, 11])
    start = truth @ turns[which_turn].transpose(-1, -2)  # start · turn = truth
    start_shift = true_shift - offsets[which_offset]
    grid = hartley_centered(vol, 3)
    rot, shift, score = best_local_poses(grid, spectrum, ctf, k, box, start, start_shift, turns, offsets)
    torch.testing.assert_close(rot, truth, atol=1e-5, rtol=0)
    torch.testing.assert_close(shift, true_shift, atol=1e-5, rtol=0)
    model = extract_slices(grid, truth, k) * ctf
    torch.testing.assert_close(score, model.norm(dim=-1), rtol=1e-4, atol=0)  # ⟨y, m⟩/‖m‖ at y = m


@pytest.fixture(scope="module")
def box64(tmp_path_factory):
    """300 particles of the bundled box-64 map at box 64, SNR 0.5, shifts up to ±2 px."""
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    out = tmp_path_factory.mktemp("box64")
    volume, voxel = read_volume(bundled_map_path(64))
    simulate_to_dir(volume, voxel, 300, out, snr=0.5, max_shift_px=2.0, seed=5)
    return out


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((np.einsum("nij,nij->n", a, b) - 1) / 2, -1, 1)))


def test_refinement_at_the_full_box_brings_poses_found_at_half_of_it_closer_to_the_truth(
    box64, tmp_path, monkeypatch
):
    working = load_particles(box64 / "truth.star", box=32)
    rot_true, shift_true = working.rotations.astype(np.float32), working.shifts.astype(np.float32)
    rng = np.random.default_rng(0)
    axis = rng.normal(size=(len(working), 3))
    axis *= np.deg2rad(1.5) / np.linalg.norm(axis, axis=1, keepdims=True)
    rot = rot_true @ axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float32)).numpy()  # 1.5° off
    shift = shift_true + rng.normal(scale=0.2, size=shift_true.shape).astype(np.float32)
    members = [np.arange(0, len(working), 2), np.arange(1, len(working), 2)]
    full = working.at_box(64)
    _, a, b = half_maps(full, rot, shift * 2)
    resolution = local_refine.halves_resolution(a, b, full.pixel_size)
    far = refine_locally(working, (rot, shift), members, 100.0, full.pixel_size, 64)  # far from Nyquist
    assert far.report["rounds"] and all(r["box"] == 32 for r in far.report["rounds"])  # at the working box
    assert far.report["rounds"][0]["ball_deg"] == local_refine.WORKING_ROUNDS[0][0]

    refined = refine_locally(working, (rot, shift), members, resolution, full.pixel_size, 64, out=tmp_path)
    before, after = _angle_deg(rot, rot_true), _angle_deg(refined.rotations, rot_true)
    assert np.median(after) < 0.7 * np.median(before)  # 150 images a half, each searched without 1/8 of them
    assert np.median(np.abs(refined.shifts - shift_true)) < 0.5 * np.median(np.abs(shift - shift_true))
    assert (
        tmp_path / local_refine.SAVED
    ).exists() and local_refine.SAVED in RESULT_FILES  # --overwrite clears it
    rounds = refined.report["rounds"]
    assert all(r["box"] > 32 for r in rounds)
    assert len(rounds) == len(local_refine.ROUNDS) or "gained less than" in refined.report["stopped"]

    def no_search(*args, **kwargs):
        raise AssertionError("a saved round was searched again")

    monkeypatch.setattr(local_refine, "_search_round", no_search)  # resumed: every round is saved
    again = refine_locally(working, (rot, shift), members, resolution, full.pixel_size, 64, out=tmp_path)
    np.testing.assert_array_equal(again.rotations, refined.rotations)
    np.testing.assert_array_equal(again.shifts, refined.shifts)
    with pytest.raises(AssertionError, match="searched again"):  # other starting poses start afresh
        refine_locally(working, (rot_true, shift), members, resolution, full.pixel_size, 64, out=tmp_path)


def test_refinement_stops_when_a_round_gains_too_little(box64, monkeypatch):
    working = load_particles(box64 / "truth.star", box=32)
    members = [np.arange(0, 100, 2), np.arange(1, 100, 2)]
    poses = (working.rotations.astype(np.float32), working.shifts.astype(np.float32))
    monkeypatch.setattr(local_refine, "MIN_GAIN", 0.5)  # no round gains half the resolution
    refined = refine_locally(working, poses, members, 7.0, working.pixel_size / 2, 64)
    assert len(refined.report["rounds"]) == 1 and "in round 1" in refined.report["stopped"], refined.report


def test_the_final_maps_are_made_from_the_refined_poses_and_say_so(box64, tmp_path):
    from types import SimpleNamespace

    from napari_cryospin.engine.full_size import write_final_maps

    working = load_particles(box64 / "truth.star", box=32)
    members = [np.arange(0, 200, 2), np.arange(1, 200, 2)]
    model = SimpleNamespace(  # a stand-in run model
        particles=working,
        box=32,
        device="cpu",
        symmetry=None,
        config=SimpleNamespace(half_maps=True, local_refine="auto", seed=0),
    )
    small = np.zeros((32, 32, 32), np.float32)
    poses = (working.rotations.astype(np.float32), working.shifts.astype(np.float32))
    margin = np.full(len(working), 100.0)
    margin[[0, 1, 2]] = 5.0  # in doubt: searched over every rotation after the rounds
    mates = MateCheck(margin, np.zeros(len(working), np.int64))
    info, maps, (rot, _), checked = write_final_maps(
        model, tmp_path, (small, small, small), members, poses, mates
    )
    refined = info["local_refinement"]
    assert refined["box"] > 32 and len(refined["rounds"]) >= 1
    assert refined["doubtful"]["searched"] == 3 and (tmp_path / "doubtful_poses.npz").exists()
    assert checked.checked_again == 3 and (checked.margin[:3] > AS_GOOD_NATS).all(), checked.margin[:3]
    assert (checked.margin[:3] <= 5.0).all()  # right, not moved: the lower of the two checks' margins
    np.testing.assert_array_equal(checked.margin[3:], margin[3:])
    assert not np.array_equal(rot, poses[0]) and rot.shape == poses[0].shape
    assert maps.box == 64 and (tmp_path / local_refine.SAVED).exists()
    model.config.local_refine = "off"
    (tmp_path / "off").mkdir()
    info, _, (rot, _), _ = write_final_maps(model, tmp_path / "off", (small, small, small), members, poses)
    assert info["local_refinement"] is None and np.array_equal(rot, poses[0])


def test_poses_are_refined_at_the_working_box_when_the_stack_is_stored_at_it(box64, tmp_path):
    from types import SimpleNamespace

    from napari_cryospin.engine.full_size import maps_at_box, write_final_maps

    stack = load_particles(box64 / "truth.star")  # stored at box 64, worked at 64
    rot_true, shift = stack.rotations.astype(np.float32), stack.shifts.astype(np.float32)
    rng = np.random.default_rng(1)
    axis = rng.normal(size=(len(stack), 3))
    axis *= np.deg2rad(4.0) / np.linalg.norm(axis, axis=1, keepdims=True)
    rot = rot_true @ axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float32)).numpy()  # 4° off
    members = [np.arange(0, len(stack), 2), np.arange(1, len(stack), 2)]
    model = SimpleNamespace(
        particles=stack,
        box=64,
        device="cpu",
        symmetry=None,
        config=SimpleNamespace(half_maps=True, local_refine="auto", seed=0),
    )
    before = maps_at_box(stack, rot, shift, members, 64)
    info, maps, (found, moved), _ = write_final_maps(
        model, tmp_path, (before.full, before.half_a, before.half_b), members, (rot, shift)
    )
    rounds = info["local_refinement"]["rounds"]
    assert rounds and all(r["box"] == 64 for r in rounds)
    assert np.median(_angle_deg(found, rot_true)) < 0.5 * np.median(_angle_deg(rot, rot_true))
    after = maps_at_box(stack, found, moved, members, 64)  # the maps written are the refined poses'
    np.testing.assert_allclose(maps.half_a, after.half_a, atol=1e-5 * float(np.abs(after.half_a).max()))
    assert maps.box == 64 and not (tmp_path / "volume_working.mrc").exists()


def test_each_particle_is_searched_against_its_half_without_its_held_out_subset(box64):
    from napari_cryospin.physics.fourier import hartley_centered as hartley
    from napari_cryospin.physics.reconstruction import accumulate, solve_map
    from napari_cryospin.postprocess.shells import apply_per_shell

    stack = load_particles(box64 / "truth.star", box=32)
    poses = (stack.rotations.astype(np.float32), stack.shifts.astype(np.float32))
    members = [np.arange(0, 160, 2), np.arange(1, 160, 2)]
    refs = local_refine.references(stack, poses, members, None, torch.device("cpu"))
    others = members[1][members[1] % local_refine.HELD_OUT != 3]
    own = solve_map(accumulate(stack, *poses, others))
    expected = hartley(torch.from_numpy(apply_per_shell(own * refs.mask, refs.weight)), 3)
    torch.testing.assert_close(
        refs.grid(1, without=3), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())
    )
    assert not torch.allclose(refs.grid(1), expected, atol=1e-3 * float(expected.abs().max()))
