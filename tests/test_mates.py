"""The mate check: a pose's 2-fold mates, and particles deliberately left on a mate found and reported."""

import json

import numpy as np
import pytest
import torch

from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.junk import Z_JUNK
from napari_cryospin.engine.mates import (
    LOCAL_DEG,
    MATE_NAMES,
    SYMMETRY_BASIN_DEG,
    SYMMETRY_DEG,
    TWOFOLD_NAMES,
    WARN_FRACTION,
    MateCheck,
    check_mates,
    map_twofolds,
    mate_rotations,
    principal_twofolds,
    symmetry_mates,
    turned_by_operator,
)
from napari_cryospin.engine.outputs import write_results
from napari_cryospin.engine.run_results import MATE_MARGIN_COLUMN, read_run
from napari_cryospin.geometry.rotations import axis_angle_to_matrix, geodesic_distance, random_rotations
from napari_cryospin.geometry.symmetry import group_operators
from napari_cryospin.model.search import SoftAssignment, insert_weighted
from napari_cryospin.physics.reconstruction import solve_map
from tiny_run import TINY_RUN

PLANTED = 0.3


def _rod(box: int = 32) -> np.ndarray:
    """A map elongated along x (with a bump that breaks its symmetry)."""
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    rod = np.exp(-(x**2 / 60.0 + y**2 / 8.0 + z**2 / 4.0))
    return rod + 0.5 * np.exp(-((x - 5) ** 2 + (y - 2) ** 2 + z**2) / 4.0)


def test_principal_twofolds_of_a_rod():
    s = principal_twofolds(_rod())
    assert np.allclose(s[0], np.diag([1.0, -1.0, -1.0]), atol=0.1)  # about the long axis, x
    assert np.allclose(s[2], np.diag([-1.0, -1.0, 1.0]), atol=0.1)  # about the shortest, z


def test_mates_are_distinct_twofolds():
    rot = random_rotations(50, torch.Generator().manual_seed(1))
    twofolds = torch.from_numpy(principal_twofolds(_rod())).float()
    mates = mate_rotations(rot, twofolds)
    assert mates.shape == (50, len(TWOFOLD_NAMES), 3, 3)
    for i in range(len(TWOFOLD_NAMES)):
        twice = mate_rotations(mates[:, i], twofolds)[:, i]  # R·Q·Q = R and S·S·R = R
        assert torch.rad2deg(geodesic_distance(twice, rot)).max() < 1e-3
        assert torch.rad2deg(geodesic_distance(mates[:, i], rot)).min() > 179.0  # each a half turn
    for family in (mates[:, :3], mates[:, 3:]):  # view 2-folds; map 2-folds (the two meet for a view down
        for i in range(3):  # a map axis, where the in-plane turn is that axis's 2-fold)
            for j in range(i):
                assert torch.rad2deg(geodesic_distance(family[:, i], family[:, j])).min() > 179.0


@pytest.fixture(scope="module")
def tiny_engine(tiny_dataset, tmp_path_factory) -> Engine:
    """An engine on the tiny set in auto-decoding, each half's map made from its own particles at their
    true poses and every pose the true one (a run's own tiny maps are at chance, not a clean run)."""
    truth = load_particles(tiny_dataset / "truth.star")
    out = tmp_path_factory.mktemp("mates") / "run"
    config = RunConfig(
        particles=str(tiny_dataset / "particles.star"), out=str(out), **TINY_RUN, snapshot_interval_s=60.0
    )
    engine = Engine(config)
    engine._build()
    rot = torch.as_tensor(truth.rotations, dtype=torch.float32)
    shift = torch.as_tensor(truth.shifts, dtype=torch.float32)
    for c in (0, 1):
        idx = np.flatnonzero(engine.model.halves_np == c)
        ones = torch.ones(len(idx), 1)
        known = SoftAssignment(rot[idx][:, None], shift[idx][:, None], ones, ones)
        sums = insert_weighted(engine.model.batch(idx), known, engine.model.disk, engine.model.disk.count(12))
        engine.model.volume.set_from_real_space(torch.from_numpy(solve_map(sums)), copy=c)
    engine.model.halves_aligned = True  # both halves in the truth's frame
    engine.model.best_rot, engine.model.best_shift = rot, shift
    engine.stages.switch_to_decoding("test")
    return engine


def _plant(engine: Engine, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """Put PLANTED of the particles on a mate of their pose (in-plane or flipped); returns them and the
    poses they had."""
    rng = np.random.default_rng(seed)
    which = np.sort(rng.choice(engine.model.n, int(PLANTED * engine.model.n), replace=False))
    rot, shift = engine.model.poses.all_poses()
    idx = torch.from_numpy(which)
    mates = mate_rotations(rot[idx], torch.eye(3).expand(3, 3, 3))
    kind = torch.from_numpy(rng.integers(0, 3, len(which)))  # in-plane 180°, flip about x or y
    engine.model.poses.reseed(idx, mates[torch.arange(len(which)), kind], shift[idx])
    return which, rot


def test_mate_check_finds_planted_flips(tiny_engine, tmp_path):
    clean = check_mates(tiny_engine.model)
    assert clean.as_good.mean() < WARN_FRACTION
    saved = tiny_engine.model.poses.all_poses()
    try:
        which, _ = _plant(tiny_engine, seed=0)
        found = check_mates(tiny_engine.model)
        assert found.as_good[which].mean() > 0.9
        assert abs(found.as_good.mean() - PLANTED) < 0.1
        config = tiny_engine.model.config
        config.local_refine = "off"  # the check as made: no search of the particles in doubt after it
        write_results(tiny_engine.model, tmp_path)
        config.local_refine = "auto"  # the search brings the flips back and checks the poses it leaves
        (tmp_path / "searched").mkdir()
        write_results(tiny_engine.model, tmp_path / "searched")
    finally:
        tiny_engine.model.poses.reseed(torch.arange(tiny_engine.model.n), *saved)
    searched = json.loads((tmp_path / "searched" / "metrics.json").read_text())["final"]
    table = load_particles(tmp_path / "searched" / "poses.star").table
    in_doubt = searched["maps"]["local_refinement"]["doubtful"]["searched"]
    kept = table["rlnParticleSelectZScore"].to_numpy() <= Z_JUNK  # junk is never searched
    assert searched["mates"]["checked_after_search"] == in_doubt >= 0.9 * kept[which].sum()
    share = np.mean(table[MATE_MARGIN_COLUMN].to_numpy()[kept] <= 1.0)
    assert abs(searched["mates"]["fraction_as_good"] - share) < 1e-9  # the search's margins count
    assert searched["mates"]["fraction_as_good"] < 0.5 * found.as_good[kept].mean()
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    kept = load_particles(tmp_path / "poses.star").table["rlnParticleSelectZScore"].to_numpy() <= Z_JUNK
    assert final["mates"]["particles_counted"] == kept.sum()  # the particles not scored as junk
    assert abs(final["mates"]["fraction_as_good"] - found.as_good[kept].mean()) < 1e-9
    assert final["validity"]["reliable"] is False
    assert "fit a flipped or distant pose as well" in final["validity"]["message"]
    table = read_run(tmp_path).table
    assert (table["mate margin"].to_numpy() <= 1.0).sum() == found.as_good.sum()
    assert set(np.unique(table["mate"])) <= set(range(1, len(MATE_NAMES) + 1))


def test_the_verdict_counts_only_the_particles_not_scored_as_junk():
    margin = np.full(100, 5.0)
    margin[:15] = 0.0  # 15 images fit a mate as well ...
    junk = np.zeros(100, bool)
    junk[:12] = True  # ... 12 of them junk: no pose to be right about
    check = MateCheck(margin, np.zeros(100, np.int64))
    assert check.reason() is not None and check.share() == pytest.approx(0.15)
    kept = MateCheck(margin, np.zeros(100, np.int64), counted=~junk)
    assert kept.share() == pytest.approx(3 / 88)
    assert kept.reason() is None
    summary = kept.summary()
    assert summary["particles_counted"] == 88
    assert sum(summary["per_mate"].values()) == pytest.approx(summary["fraction_as_good"])


def test_mate_check_finds_particles_left_on_distant_poses(tiny_engine):
    """Poses 100–150° from the truth are on no 2-fold of it (each ≥ 30° from every half turn): the best
    distant grid pose, not a mate, is what fits them as well."""
    saved = tiny_engine.model.poses.all_poses()
    rot, shift = saved
    rng = np.random.default_rng(4)
    which = np.sort(rng.choice(tiny_engine.model.n, int(PLANTED * tiny_engine.model.n), replace=False))
    gen = torch.Generator().manual_seed(5)
    wrong = torch.empty(len(which), 3, 3)
    for k, i in enumerate(which):
        while True:
            turn = random_rotations(1, gen)[0]
            angle = float(torch.rad2deg(geodesic_distance(turn, torch.eye(3))))
            if 100.0 <= angle <= 150.0:
                wrong[k] = turn @ rot[i]
                break
    try:
        tiny_engine.model.poses.reseed(torch.from_numpy(which), wrong, shift[which])
        found = check_mates(tiny_engine.model)
    finally:
        tiny_engine.model.poses.reseed(torch.arange(tiny_engine.model.n), *saved)
    assert found.as_good[which].mean() > 0.8
    assert (found.mate[which][found.as_good[which]] == len(MATE_NAMES) - 1).mean() > 0.8  # the distant pose


def test_research_brings_planted_flips_back(tiny_engine):
    saved = tiny_engine.model.poses.all_poses()
    try:
        which, before = _plant(tiny_engine, seed=1)
        tiny_engine.stages.research_poses()
        after, _ = tiny_engine.model.poses.all_poses()
    finally:
        tiny_engine.model.poses.reseed(torch.arange(tiny_engine.model.n), *saved)
    back = torch.rad2deg(geodesic_distance(after[which], before[which]))
    assert (back < LOCAL_DEG + 0.5).float().mean() > 0.6  # the grid alone: 1 of 60


def test_symmetry_mates_are_the_pose_turned_by_an_operator():
    """A 2-fold about z (C2): the map-axis mate about z always, the in-plane mate for near-axial views."""
    rot = random_rotations(400, torch.Generator().manual_seed(3), torch.float64)
    axes = torch.diag(torch.ones(3, dtype=torch.float64))
    twofolds = 2 * axes[:, :, None] * axes[:, None, :] - torch.eye(3, dtype=torch.float64)  # about x, y, z
    rots = torch.cat([rot[:, None], mate_rotations(rot, twofolds)], 1)
    c2 = twofolds[2:].numpy()
    same = symmetry_mates(rots, c2)
    assert same[:, 5].all() and not same[:, 3:5].any()  # map axis 3 is z here
    view_tilt = torch.rad2deg(torch.arccos(rot[:, 2, 2].abs()))  # the view axis R·e_z from ±z
    assert torch.equal(same[:, 0], view_tilt < SYMMETRY_DEG / 2)  # R·Rz(π)·Rᵀ: 2-fold about R·e_z
    assert not symmetry_mates(rots, np.zeros((0, 3, 3))).any()


def test_a_distant_grid_pose_in_a_symmetry_mates_basin_is_that_mate():
    """The grid's best pose near a T mate g·R lands up to ~25° from it: still the mate, not a distant pose."""
    ops = group_operators("T")[1:]
    gen = torch.Generator().manual_seed(8)
    axis = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm(dim=1, keepdim=True)
    g = torch.as_tensor(ops, dtype=torch.float64)[torch.arange(200) % len(ops)]
    for off_deg, is_mate in ((22.0, True), (45.0, False)):
        turn = axis_angle_to_matrix(axis * np.deg2rad(off_deg)) @ g  # a turn off_deg from an operator
        found = turned_by_operator(turn, ops, SYMMETRY_BASIN_DEG)
        assert bool(found.all()) if is_mate else not found.any()


def test_mates_of_a_detected_group_are_not_counted(tiny_engine):
    long_axis = np.stack(
        [t[0].numpy() for t in map_twofolds(tiny_engine.model)]
    )  # each half's, as if C2 about it
    check = check_mates(tiny_engine.model, ("C2", long_axis))
    assert check.symmetry_share >= 0.95 / len(MATE_NAMES)  # the mate about the long axis, for every particle
    counted = np.isfinite(check.margin)
    assert counted.all() and not (check.mate == 3).any()  # "map axis 1" is never the best mate counted
    assert check.summary()["symmetry_group"] == "C2"
