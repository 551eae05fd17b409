"""Semi-amortized posing (``--explore-subset``): only the subset is explored and auto-encoded, the encoder
poses the rest, and the audit subset and the unsure particles (a cut learnt from the audit) are searched."""

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from napari_cryospin.cli import build_parser
from napari_cryospin.cli.reconstruct import config_from_args
from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine import distributed
from napari_cryospin.engine.amortized import SemiAmortized, stratified_choice, unsure_threshold
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.events import Command, Stage
from napari_cryospin.engine.run_model import RunModel
from napari_cryospin.engine.stages import Stages
from process_group import free_port, join_as
from test_distributed import _agree, _halves
from tiny_run import TINY_RUN

# The final local refinement is left out: its discrete search turns the sums' order (a few tenths of a
# degree between one and two processes on this near-chance set) into other poses; it runs on process 0.
SETTINGS = dict(**TINY_RUN, explore_subset=100, local_refine="off")


# ------------------------------------------------------------------------------------------- units
def test_the_cut_makes_the_fewest_audit_mistakes():
    conf = np.array([1.0, 2.0, 3.0, 10.0, 12.0, np.nan, 2.5, 11.0])
    wrong = np.array([True, True, True, False, False, False, False, False])
    # Flagging ≤ 3 leaves no wrong pose and flags one right one (1 mistake); ≤ 2 leaves one wrong (1, tie,
    # flags fewer); everything else makes more.
    assert unsure_threshold(conf, wrong) == 2.0
    # A wrong pose among the confident ones is not worth flagging the right ones below it.
    assert unsure_threshold(np.append(conf, 11.5), np.append(wrong, True)) == 2.0


def test_the_cut_flags_none_without_wrong_poses_and_all_when_wrong_ones_dominate():
    conf = np.array([0.5, 1.0, 5.0, np.nan])
    assert unsure_threshold(conf, np.zeros(4, bool)) == -np.inf
    cut = unsure_threshold(conf, np.array([False, True, True, True]))  # one right pose, least confident
    assert np.all(np.nan_to_num(conf, nan=np.inf) <= cut)  # agreeing heads (NaN) are flagged too
    assert unsure_threshold(conf, np.ones(4, bool)) == np.inf


def test_subset_and_audit_are_drawn_within_each_half_and_do_not_overlap():
    n, halves = 1000, _halves(1000, seed=4)
    semi = SemiAmortized(n, halves, 300, heads=3, seed=4)
    assert semi.active and semi.size == 300
    assert abs(int((halves[semi.explored] == 0).sum()) - 150) <= 1
    assert semi.is_audit.sum() == 70 and not (semi.is_audit & semi.is_explored).any()
    assert abs(int((halves[semi.is_audit] == 0).sum()) - 35) <= 1
    perm = np.random.default_rng(0).permutation(n)
    order = semi.order(perm, Stage.ENCODING)
    assert set(order) == set(semi.explored) and list(order) == [p for p in perm if semi.is_explored[p]]
    assert (semi.order(perm, Stage.DECODING) == perm).all() and semi.posed(Stage.DECODING).all()
    drawn = stratified_choice(np.arange(10), np.array([0] * 3 + [1] * 7), 5, np.random.default_rng(0))
    assert len(set(drawn)) == 5 and (drawn < 3).sum() in (1, 2)


@pytest.mark.parametrize("subset", [0, 200, 500])
def test_subset_zero_or_the_whole_set_explores_every_particle(subset):
    semi = SemiAmortized(200, _halves(200), subset, heads=3, seed=0)
    assert not semi.active and semi.size == 200 and not semi.is_audit.any()


def test_cli_flag_and_bad_values():
    args = build_parser().parse_args(["reconstruct", "p.star", "--out", "run", "--explore-subset", "150"])
    assert config_from_args(args).explore_subset == 150
    assert build_parser().parse_args(["reconstruct", "p.star", "--out", "run"]).explore_subset == 0
    with pytest.raises(ValueError, match=r"--explore-subset must be 0 .* or at least 100.*Fix:"):
        RunConfig(particles="p.star", out="run", explore_subset=50)
    with pytest.raises(ValueError, match=r"--explore-subset needs exploration.*Fix:"):
        RunConfig(particles="p.star", out="run", explore_subset=150, explore_epochs=0)


# ------------------------------------------------------------------------------------------- a run
@pytest.fixture(scope="module")
def semi_run(tiny_dataset, tmp_path_factory):
    """A tiny run exploring 100 of 200 particles, recording which particles each stage searched."""
    out = tmp_path_factory.mktemp("semi") / "run"
    seen: dict[str, list[np.ndarray]] = {"explored": [], "encoded": [], "switch_search": []}
    explore, encode, search = Stages.exploring_step, Stages.encoding_step, RunModel.fine_grid_search

    def explore_spy(self, idx, n_points):
        seen["explored"].append(np.array(idx))
        return explore(self, idx, n_points)

    def encode_spy(self, idx, n_points):
        seen["encoded"].append(np.array(idx))
        return encode(self, idx, n_points)

    def search_spy(self, batch, *args, **kw):
        seen["switch_search"].append(batch.idx.cpu().numpy())
        return search(self, batch, *args, **kw)

    config = RunConfig(
        particles=str(tiny_dataset / "particles.star"), out=str(out), **SETTINGS, snapshot_interval_s=5.0
    )
    engine = Engine(config)
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(Stages, "exploring_step", explore_spy)
        mp_.setattr(Stages, "encoding_step", encode_spy)
        mp_.setattr(RunModel, "fine_grid_search", search_spy)
        snaps = list(engine.run())
    snap = snaps[-1]
    assert snap.stage == Stage.DONE and "done" in snap.message
    return engine, out, {k: np.concatenate(v) if v else np.zeros(0, int) for k, v in seen.items()}


def test_only_the_subset_is_explored_and_auto_encoded(semi_run):
    engine, _, seen = semi_run
    subset = set(engine.model.semi.explored.tolist())
    assert len(subset) == 100
    assert set(seen["explored"].tolist()) == subset and len(seen["explored"]) == 100  # one epoch
    assert set(seen["encoded"].tolist()) == subset and len(seen["encoded"]) == 100


def test_the_audit_and_the_unsure_particles_and_nothing_else_are_grid_searched(semi_run):
    engine, out, seen = semi_run
    semi = engine.model.semi
    report = json.loads((out / "metrics.json").read_text())["final"]["semi_amortized"]
    conf = np.nan_to_num(semi.confidence.numpy(), nan=np.inf)
    rest = ~semi.is_explored
    assert np.isfinite(semi.confidence.numpy()[rest]).any() and np.isnan(semi.confidence.numpy()[~rest]).all()
    unsure = rest & ~semi.is_audit & (conf <= report["unsure_cut_nats"])
    searched = seen["switch_search"]
    assert len(searched) == len(set(searched.tolist()))  # each particle once
    assert set(searched.tolist()) == set(np.flatnonzero(semi.is_audit | unsure).tolist())
    assert report["grid_searched"] == len(searched) and report["audit"] == 10 == semi.is_audit.sum()
    assert report["unsure_share"] == pytest.approx(unsure.sum() / 100) and 0 < unsure.sum() < 90
    assert 0 <= report["audit_median_angle_deg"] <= 180 and report["encoder_posed"] == 100
    assert report["explored"] == 100 and report["posing_s"] > 0


def test_every_particle_ends_with_a_pose(semi_run):
    engine, out, _ = semi_run
    rest = ~engine.model.semi.is_explored
    # The encoder's sure poses keep their head (0..M−1); grid-searched ones that moved are marked M.
    assert ((engine.model.best_head >= 0) & (engine.model.best_head <= engine.config.heads)).all()
    assert (engine.model.best_head[torch.from_numpy(rest)] < engine.config.heads).any()
    rot = load_particles(out / "poses.star").rotations
    assert len(rot) == 200
    angle_to_identity = np.degrees(np.arccos(np.clip((np.trace(rot, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert (angle_to_identity[rest] > 1e-3).all()  # none kept the identity it started from


def test_a_stopped_run_resumes_before_and_after_the_switch(tiny_dataset, semi_run, tmp_path):
    _, done, _ = semi_run
    out = tmp_path / "run"
    settings = dict(particles=str(tiny_dataset / "particles.star"), out=str(out), **SETTINGS)
    for stop_in, resume in ((Stage.ENCODING, False), (Stage.DECODING, True)):
        gen = Engine(RunConfig(**settings, snapshot_interval_s=0.0, resume=resume)).run()
        snap = next(gen)
        while snap.stage != stop_in:
            snap = gen.send(None)
        assert "stopped" in gen.send(Command("stop")).message
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["semi"]["report"] is not None  # posed before the stop, kept for the final metrics
    for _ in Engine(RunConfig(**settings, resume=True)).run():
        pass
    reports = [json.loads((d / "metrics.json").read_text())["final"]["semi_amortized"] for d in (done, out)]
    assert reports[1]["grid_searched"] == reports[0]["grid_searched"]
    assert reports[1]["unsure_cut_nats"] == pytest.approx(reports[0]["unsure_cut_nats"])
    lowest, median = _agree(done, out)
    assert lowest >= 0.99 and median < 0.1


def _worker(rank: int, world: int, port: int, particles: str, out: str) -> None:
    join_as(rank, world, port)
    engine = Engine(RunConfig(particles=particles, out=out, snapshot_interval_s=5.0, **SETTINGS))
    assert engine.dp.world == world
    for _ in engine.run():
        pass
    distributed.shutdown()


def test_two_processes_pose_the_rest_as_one_does(tiny_dataset, semi_run, tmp_path):
    _, one, _ = semi_run
    out = tmp_path / "two"
    mp.spawn(_worker, args=(2, free_port(), str(tiny_dataset / "particles.star"), str(out)), nprocs=2)
    reports = [json.loads((d / "metrics.json").read_text())["final"]["semi_amortized"] for d in (one, out)]
    for key in ("explored", "audit", "grid_searched", "unsure_share"):
        assert reports[1][key] == reports[0][key], key
    lowest, median = _agree(one, out)
    assert lowest >= 0.99 and median < 0.1
