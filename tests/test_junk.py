"""Junk scores: the robust z, the ROC AUC, the engine's score against a known map, and cryospin evaluate."""

import json

import numpy as np
import pytest
import torch

from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.junk import Z_JUNK, correlation_z, robust_z, score_junk
from napari_cryospin.metrics.junk_auc import JUNK_COLUMN, roc_auc, truth_junk
from napari_cryospin.model.search import SoftAssignment, grid_search, insert_weighted
from napari_cryospin.physics.reconstruction import solve_map


@pytest.fixture(scope="module")
def junk_set(tmp_path_factory):
    """300 box-32 images of the bundled map, SNR 0.2, coloured noise, 20 % junk of both kinds."""
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.nuisances import Nuisances
    from napari_cryospin.simulation.simulate import simulate_to_dir

    out = tmp_path_factory.mktemp("junk")
    volume, voxel = read_volume(bundled_map_path(32))
    nuisances = Nuisances(coloured_noise=True, junk_fraction=0.2)
    simulate_to_dir(volume, voxel, 300, out, snr=0.2, max_shift_px=1.0, seed=5, nuisances=nuisances)
    return out


def test_robust_z_flags_the_low_tail_whatever_the_junk_share():
    rng = np.random.default_rng(0)
    particles = rng.normal(0.3, 0.02, 800)
    junk = rng.normal(0.1, 0.05, 200)
    z = robust_z(np.concatenate([particles, junk]))
    assert np.mean(z[800:] > Z_JUNK) > 0.8 and np.mean(z[:800] > Z_JUNK) < 0.05
    assert np.mean(robust_z(particles) > Z_JUNK) < 0.05  # no junk: almost nothing flagged


def test_junk_z_keeps_clean_particles_whose_correlations_crowd_towards_one():
    rng = np.random.default_rng(4)
    clean = np.tanh(rng.normal(1.9, 0.2, 2000))  # high SNR, no junk: median 0.956, skewed low
    assert np.mean(correlation_z(clean) > Z_JUNK) < 0.04  # about the normal tail (2.3 %)
    assert np.mean(robust_z(clean) > Z_JUNK) > 0.04  # the raw correlation's z flags more
    junk = np.tanh(rng.normal(0.8, 0.3, 200))
    z = correlation_z(np.concatenate([clean, junk]))
    assert np.mean(z[2000:] > Z_JUNK) > 0.9 and np.mean(z[:2000] > Z_JUNK) < 0.05


def test_roc_auc_is_the_probability_a_junk_row_scores_higher():
    rng = np.random.default_rng(1)
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.3
    pairs = score[positive][:, None] - score[~positive][None, :]
    assert roc_auc(score, positive) == pytest.approx(np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0))
    assert roc_auc(np.arange(4.0), np.array([False, False, True, True])) == 1.0
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.arange(3.0), np.zeros(3, bool))


def _known_map_engine(junk_set, out) -> tuple[Engine, np.ndarray, torch.Tensor]:
    """An engine on the junk set, its truth junk rows, and the map (real space) from the true poses."""
    truth = load_particles(junk_set / "truth.star")
    junk = truth_junk(truth.table)
    eng = Engine(RunConfig(particles=str(junk_set / "particles.star"), out=str(out), device="cpu"))
    eng._build()
    real = np.flatnonzero(~junk)
    ones = torch.ones(len(real), 1)
    poses = SoftAssignment(
        torch.as_tensor(truth.rotations[real], dtype=torch.float32)[:, None],
        torch.as_tensor(truth.shifts[real], dtype=torch.float32)[:, None],
        ones,
        ones,
    )
    sums = insert_weighted(eng.model.batch(real), poses, eng.model.disk, eng.model.disk.count(15))
    return eng, junk, torch.from_numpy(solve_map(sums))


def test_engine_junk_score_separates_junk_against_a_known_map(junk_set, tmp_path):
    eng, junk, known = _known_map_engine(junk_set, tmp_path / "run")
    assert junk.sum() == 60
    for copy in range(eng.model.volume.copies):
        eng.model.volume.set_from_real_space(known, copy=copy)
    # Every image (junk too) gets its best fine-grid pose, as a run would give it.
    batch = eng.model.batch(np.arange(eng.model.n))
    found = grid_search(
        eng.model.volume,
        batch,
        eng.model.grids[-1],
        torch.zeros(eng.model.n, 2),
        eng.model.offsets,
        eng.model.disk,
        eng.model.disk.count(10),
        1,
    )
    eng.model.best_rot, eng.model.best_shift = found.rotations[:, 0], found.shifts[:, 0]
    scores = score_junk(eng.model)
    assert roc_auc(scores.z, junk) > 0.9
    assert roc_auc(-scores.log_likelihood_ratio, junk) > 0.8
    assert scores.junk[junk].mean() > 0.2 and scores.junk[~junk].mean() < 0.01  # z > Z_JUNK: few lost


def test_junk_score_holds_each_particle_against_the_other_half_once_the_halves_share_a_frame(
    junk_set, tmp_path
):
    eng, junk, known = _known_map_engine(junk_set, tmp_path / "run")
    assert eng.model.volume.copies == 2
    eng.model.volume.set_from_real_space(known, copy=0)
    eng.model.volume.set_from_real_space(-known, copy=1)  # half B's map: the same, negated
    truth = load_particles(junk_set / "truth.star")
    eng.model.best_rot = torch.as_tensor(truth.rotations, dtype=torch.float32)
    eng.model.best_shift = torch.as_tensor(truth.shifts, dtype=torch.float32)
    eng.model.offsets = torch.zeros(
        1, 2
    )  # keep the true shifts (a search on the negated map would move them)
    half = eng.model.halves.numpy()
    for aligned, sign_a in ((True, -1), (False, 1)):  # aligned: half A's particles meet half B's map
        eng.model.halves_aligned = aligned
        corr = score_junk(eng.model).correlation
        assert np.mean(np.sign(corr[~junk & (half == 0)]) == sign_a) > 0.9, aligned
        assert np.mean(np.sign(corr[~junk & (half == 1)]) == -sign_a) > 0.9, aligned


def test_evaluate_scores_particles_only_and_reports_the_junk_auc(junk_set, tmp_path, capsys):
    from napari_cryospin.cli import main
    from napari_cryospin.data.poses_out import write_poses_star
    from napari_cryospin.geometry.rotations import random_rotations

    truth = load_particles(junk_set / "truth.star")
    junk = truth_junk(truth.table)
    rot = truth.rotations.copy()
    rot[junk] = random_rotations(int(junk.sum()), torch.Generator().manual_seed(2)).numpy()  # junk: anything
    score = np.where(junk, 3.0, 0.0) + np.random.default_rng(3).normal(0, 1, len(junk))
    est = tmp_path / "poses.star"
    write_poses_star(est, truth, rot, truth.shifts, {JUNK_COLUMN: score})
    report = tmp_path / "eval.json"
    code = main(
        ["evaluate", "--truth", str(junk_set / "truth.star"), "--poses", str(est), "--json", str(report)]
    )
    assert code == 0
    numbers = json.loads(report.read_text())
    assert numbers["n"] == 240 and numbers["junk"] == 60
    assert numbers["rotation_error_median_deg"] < 0.1  # the junk rows' random poses are not scored
    assert numbers["junk_auc"] == pytest.approx(roc_auc(score, junk))
    assert "junk score ROC AUC" in capsys.readouterr().out
