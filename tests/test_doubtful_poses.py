"""The dense global search of the particles in doubt: which are searched, what it brings back, what stays."""

import numpy as np
import pytest
import torch

from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine import doubtful_poses
from napari_cryospin.engine.doubtful_poses import in_doubt, search_doubtful
from napari_cryospin.engine.mates import AS_GOOD_NATS, MATE_NAMES, MateCheck
from napari_cryospin.engine.outputs import _extra_notes
from napari_cryospin.engine.run_folder import RESULT_FILES
from napari_cryospin.geometry.rotations import axis_angle_to_matrix
from napari_cryospin.geometry.symmetry import group_operators


def test_the_particles_in_doubt_are_those_under_the_margin_at_most_a_share_lowest_first(monkeypatch):
    monkeypatch.setattr(doubtful_poses, "SHARE", 0.3)
    margin = np.array([50.0, 3.0, np.nan, -2.0, 9.0, 12.0, 0.5, 8.0, 40.0, 1.0, 7.0])
    members = np.arange(1, 11)  # particle 0 is junk: never searched
    # under 10 nats: 1, 3, 4, 6, 7, 9 (NaN: every mate a symmetry mate); at most 3 of 10, lowest first
    np.testing.assert_array_equal(in_doubt(margin, members), [3, 6, 9])
    np.testing.assert_array_equal(in_doubt(margin, np.array([4, 5, 7, 8])), [7])  # 0.3 × 4 → 1: the lowest
    monkeypatch.setattr(doubtful_poses, "SHARE", 0.5)
    assert len(in_doubt(margin, np.array([5, 8]))) == 0  # the lowest is over the margin
    monkeypatch.setattr(doubtful_poses, "SHARE", 1.0)
    np.testing.assert_array_equal(in_doubt(margin, members), [1, 3, 4, 6, 7, 9, 10])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """300 particles of the bundled box-64 map served at box 32, SNR 0.5, shifts up to ±2 px."""
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    out = tmp_path_factory.mktemp("doubt")
    volume, voxel = read_volume(bundled_map_path(64))
    simulate_to_dir(volume, voxel, 300, out, snr=0.5, max_shift_px=2.0, seed=7)
    return load_particles(out / "truth.star", box=32)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((np.einsum("nij,nij->n", a, b) - 1) / 2, -1, 1)))


def test_particles_on_a_flipped_pose_are_brought_back_and_right_ones_stay(stack, tmp_path, monkeypatch):
    truth, true_shift = stack.rotations.astype(np.float32), stack.shifts.astype(np.float32)
    n = len(truth)
    flipped = np.arange(0, n, 10)  # 30 particles turned 180° about their own view's x axis
    doubtful_right = np.arange(3, n, 15)  # 20 right particles whose margin is as low
    flip = axis_angle_to_matrix(torch.tensor([[np.pi, 0.0, 0.0]])).numpy()[0]
    rot, shift = truth.copy(), true_shift.copy()
    rot[flipped] = truth[flipped] @ flip
    shift[flipped] += np.float32([5.0, -1.0])  # their shifts wrong too: the search is about the centre
    margin = np.full(n, 100.0)
    margin[flipped], margin[doubtful_right] = 1.0, 2.0
    members = [np.arange(0, n, 2), np.arange(1, n, 2)]
    monkeypatch.setattr(doubtful_poses, "SHARE", 0.5)
    found = search_doubtful(stack, (rot, shift), members, margin, out=tmp_path)

    assert _angle_deg(rot[flipped], truth[flipped]).min() > 170
    back = _angle_deg(found.rotations[flipped], truth[flipped])
    assert np.mean(back < 10) >= 0.8, np.sort(back)
    shift_error = np.linalg.norm(found.shifts[flipped] - true_shift[flipped], axis=1)
    assert np.mean(shift_error[back < 10] < 1.0) >= 0.9, np.sort(shift_error)
    assert _angle_deg(found.rotations[doubtful_right], truth[doubtful_right]).max() < 10  # refined, not moved
    others = np.setdiff1d(np.arange(n), np.concatenate([flipped, doubtful_right]))
    np.testing.assert_array_equal(found.rotations[others], rot[others])  # not in doubt: not searched
    np.testing.assert_array_equal(found.shifts[others], shift[others])
    assert found.report["searched"] == 50 and found.report["passes"] == doubtful_poses.PASSES
    assert found.report["moved"] == np.sum(_angle_deg(found.rotations, rot) > 20)
    assert found.report["moved"] >= 24
    picked = np.zeros(n, bool)
    picked[np.concatenate([flipped, doubtful_right])] = True
    np.testing.assert_array_equal(found.searched, picked)
    assert np.isnan(found.margin[~picked]).all()  # the check of the poses left: the searched ones only
    right = _angle_deg(found.rotations, truth) < 10
    assert np.mean(found.margin[picked & right] > AS_GOOD_NATS) >= 0.9, np.sort(found.margin[picked])
    assert doubtful_poses.SAVED in RESULT_FILES  # --overwrite clears it

    def no_search(*args, **kwargs):
        raise AssertionError("a finished search was searched again")

    monkeypatch.setattr(doubtful_poses, "_search_half", no_search)  # resumed: the search is saved
    again = search_doubtful(stack, (rot, shift), members, margin, out=tmp_path)
    np.testing.assert_array_equal(again.rotations, found.rotations)
    np.testing.assert_array_equal(again.margin, found.margin)
    np.testing.assert_array_equal(again.searched, found.searched)
    assert again.report == found.report and isinstance(again.report["moved"], int)
    assert isinstance(again.report["passes"], int)
    with pytest.raises(AssertionError, match="searched again"):  # other poses start afresh
        search_doubtful(stack, (truth, shift), members, margin, out=tmp_path)
    fewer = margin.copy()
    fewer[doubtful_right] = 100.0
    with pytest.raises(AssertionError, match="searched again"):  # so do other particles in doubt
        search_doubtful(stack, (rot, shift), members, fewer, out=tmp_path)


def test_a_move_to_a_symmetry_mate_is_not_a_move_to_another_basin():
    start = np.repeat(np.eye(3)[None], 4, 0)
    axis_angles = [[0, 0, 2 * np.pi / 5], [0, 0, 0.1], [0.0, 1.2, 0], [1.0, 0, 0]]
    turns = axis_angle_to_matrix(torch.tensor(axis_angles))
    end = turns.double().numpy() @ start  # a C5 mate, 6° off, 69° off, 57° off
    np.testing.assert_array_equal(doubtful_poses.moved_basin(start, end, None), [True, False, True, True])
    np.testing.assert_array_equal(
        doubtful_poses.moved_basin(start, end, group_operators("C5")), [False, False, True, True]
    )


def test_a_run_with_no_particle_in_doubt_searches_nothing(stack):
    poses = (stack.rotations.astype(np.float32), stack.shifts.astype(np.float32))
    members = [np.arange(0, 100, 2), np.arange(1, 100, 2)]
    found = search_doubtful(stack, poses, members, np.full(len(stack), 50.0))
    assert found.report["searched"] == 0 and found.report["moved"] == 0 and found.report["passes"] == 0
    np.testing.assert_array_equal(found.rotations, poses[0])


def test_the_last_line_says_how_many_particles_in_doubt_were_searched_and_moved():
    refined = {"box": 64, "rounds": [{}], "doubtful": {"searched": 1250, "moved": 295}}
    line = _extra_notes(0, True, refined)
    assert "1250 particles in doubt searched over every rotation, 295 moved to another pose" in line
    refined["doubtful"]["searched"] = 0
    assert "in doubt" not in _extra_notes(0, True, refined)


def test_a_symmetry_mate_of_the_detected_group_is_not_a_distant_pose_that_fits_as_well(tmp_path, monkeypatch):
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    volume, voxel = read_volume(bundled_map_path(64))
    c2 = volume + np.roll(volume[:, ::-1, ::-1], (1, 1), axis=(1, 2))  # the 2-fold about z: x, y → −x, −y
    simulate_to_dir(c2, voxel, 160, tmp_path, snr=0.5, max_shift_px=1.0, seed=3)
    stack = load_particles(tmp_path / "truth.star", box=32)
    poses = (stack.rotations.astype(np.float32), stack.shifts.astype(np.float32))
    members = [np.arange(0, 160, 2), np.arange(1, 160, 2)]
    margin = np.full(160, 100.0)
    margin[:24] = 0.0
    monkeypatch.setattr(doubtful_poses, "PASSES", 1)
    blind = search_doubtful(stack, poses, members, margin)
    seen = search_doubtful(stack, poses, members, margin, mates_of=group_operators("C2")[1:])
    # Without the group, the best distant pose is the pose turned about z, which fits nearly as well (the
    # half maps' noise and the refinement leave a few nats at SNR 0.5); with it, a pose of another view.
    assert np.median(blind.margin[:24]) < 0.2 * np.median(seen.margin[:24]), (blind.margin, seen.margin)
    assert (seen.margin[:24] > 10 * AS_GOOD_NATS).all(), np.sort(seen.margin[:24])


def test_the_mate_check_takes_the_margins_the_search_measured_for_the_poses_it_left():
    margin = np.array([0.5, 0.2, 30.0, 0.1, np.nan, 12.0])
    check = MateCheck(margin, np.array([0, 1, 2, 3, 4, 5]), counted=np.array([1, 1, 1, 1, 1, 0], bool))
    assert check.share() == pytest.approx(3 / 5)
    searched = np.array([True, True, False, False, False, True])
    moved = np.ones(6, bool)
    after = check.after_search(searched, np.array([25.0, 0.4, np.nan, np.nan, np.nan, 3.0]), moved)
    np.testing.assert_array_equal(after.margin[[0, 1, 5]], [25.0, 0.4, 3.0])
    np.testing.assert_array_equal(after.margin[[2, 3]], [30.0, 0.1])  # not searched: as checked before
    assert np.isnan(after.margin[4])
    assert after.share() == pytest.approx(2 / 5) and after.summary()["checked_after_search"] == 3
    assert after.mate[1] == MATE_NAMES.index("a distant pose") and after.mate[3] == 3
    np.testing.assert_array_equal(check.margin[[0, 1]], [0.5, 0.2])  # the first check is left as it was


def test_a_searched_particle_left_on_its_basin_keeps_the_lower_of_the_two_margins():
    # the search chose the pose it checks with the same image: alone, its margin is biased upward
    margin = np.array([0.5, 0.2, 30.0, 4.0, 0.3])
    check = MateCheck(margin, np.array([0, 1, 2, 3, 4]))
    searched = np.array([True, True, False, True, True])
    moved = np.array([True, False, False, False, False])
    after = check.after_search(searched, np.array([25.0, 12.0, np.nan, 2.0, np.nan]), moved)
    np.testing.assert_array_equal(after.margin, [25.0, 0.2, 30.0, 2.0, 0.3])
    distant = MATE_NAMES.index("a distant pose")
    np.testing.assert_array_equal(after.mate, [distant, 1, 2, distant, 4])  # whose margin stands, its mate
    assert after.share() == pytest.approx(2 / 5)  # by the search's margins alone: none
