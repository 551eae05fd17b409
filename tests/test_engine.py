"""The cryoSPIN engine on a tiny simulated set: WTA, switch, stop/resume, half maps, outputs."""

import json

import numpy as np
import pytest
import torch

from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.events import Command, Stage
from napari_cryospin.engine.junk import Z_JUNK
from napari_cryospin.engine.switch import AutoSwitch
from napari_cryospin.engine.validity import half_map_mask
from napari_cryospin.model.likelihood import FrequencyDisk, searched_error, shift_grid, squared_error
from napari_cryospin.model.volume import HartleyVolume
from tiny_run import TINY_RUN


def _config(tiny_dataset, tmp_path, **kw) -> RunConfig:
    base = dict(
        particles=str(tiny_dataset / "particles.star"),
        out=str(tmp_path / "run"),
        **TINY_RUN,
        snapshot_interval_s=0.0,
        eval_every=1,
    )
    base.update(kw)
    return RunConfig(**base)


def test_winner_takes_all_picks_lowest_loss_head(tiny_dataset, tmp_path):
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.geometry.rotations import random_rotations

    eng = Engine(_config(tiny_dataset, tmp_path))
    eng._build()
    truth = load_particles(tiny_dataset / "truth.star")
    idx = np.arange(8)
    batch = eng.model.batch(idx)
    true_rot = torch.as_tensor(truth.rotations[idx], dtype=torch.float32)
    wrong = random_rotations(8, torch.Generator().manual_seed(0))
    # put the true pose in head 1, random ones elsewhere; load the true map into the decoder
    from napari_cryospin.data.mrc import read_volume

    vol, _ = read_volume(tiny_dataset / "truth_volume.mrc")
    eng.model.volume.set_from_real_space(torch.as_tensor(vol) / (eng.model.scale * eng.model.box))
    rot = torch.stack([wrong, true_rot, wrong.flip(0)], dim=1)
    shift = torch.as_tensor(truth.shifts[idx], dtype=torch.float32)[:, None].expand(8, 3, 2)
    err = squared_error(eng.model.volume, batch, rot, shift, eng.model.disk, eng.model.disk.count(8))
    assert (err.argmin(1) == 1).float().mean() >= 0.75
    # and the engine's WTA step records, per particle, exactly the argmin head of its loss
    eng.model.encoder.train()  # the step runs in training mode (batch statistics): the same batch, output
    with torch.no_grad():
        r, s = eng.model.encoder(eng.model.encoder_input(batch))
        expected = torch.empty(len(idx), dtype=torch.long)
        for copy in range(eng.model.volume.copies):  # each particle against its own half's map
            own = (
                eng.model.halves[batch.idx] == copy
                if eng.model.volume.copies == 2
                else torch.ones(8, dtype=torch.bool)
            )
            err, _ = searched_error(
                eng.model.volume,
                batch.select(own),
                r[own],
                s[own],
                eng.model.offsets,
                eng.model.disk,
                eng.model.disk.count(8),
                copy,
            )
            expected[own] = err.argmin(1)
    eng.stages.enc_opt.param_groups[0]["lr"] = 0.0
    eng.stages.vol_opt.param_groups[0]["lr"] = 0.0
    eng.stages.encoding_step(idx, eng.model.disk.count(8))
    assert torch.equal(eng.model.best_head[idx], expected)


def test_shift_search_equals_explicit_shifts_and_never_loses(tiny_dataset, tmp_path):
    from napari_cryospin.geometry.rotations import random_rotations

    eng = Engine(_config(tiny_dataset, tmp_path))
    eng._build()
    batch = eng.model.batch(np.arange(6))
    rot = random_rotations(12, torch.Generator().manual_seed(5)).reshape(6, 2, 3, 3)
    base = torch.randn(6, 2, 2, generator=torch.Generator().manual_seed(6))
    n = eng.model.disk.count(10)
    best, shifts = searched_error(eng.model.volume, batch, rot, base, shift_grid(2.0), eng.model.disk, n)
    explicit = squared_error(eng.model.volume, batch, rot, shifts, eng.model.disk, n)
    assert torch.allclose(best, explicit, atol=1e-5)
    assert torch.all(best <= squared_error(eng.model.volume, batch, rot, base, eng.model.disk, n) + 1e-6)


def test_likelihood_disk_is_sorted_and_inside_nyquist():
    disk = FrequencyDisk(32, 2.0, torch.device("cpu"))
    assert torch.all(disk.radius[1:] >= disk.radius[:-1])
    assert disk.radius.max() <= 15
    assert disk.count(0) == 1 and disk.count(1) == 5


@pytest.mark.parametrize("explore", [0, 2])
def test_switch_on_command_changes_stage_at_next_step(tiny_dataset, tmp_path, explore):
    eng = Engine(_config(tiny_dataset, tmp_path, switch=None, epochs=3, explore_epochs=explore))
    gen = eng.run()
    snap = next(gen)
    assert snap.stage == (Stage.EXPLORING if explore else Stage.ENCODING)
    commanded_at = snap.step
    snap = gen.send(Command("switch"))
    while snap.step == commanded_at:  # an epoch-end snapshot may come before the next step
        snap = gen.send(None)
    assert snap.step == commanded_at + 1 and snap.stage == Stage.DECODING
    assert eng.model.switch_reason == "requested by the user"
    assert eng.model.poses is not None
    gen.close()


def test_stages_run_in_order_exploring_encoding_decoding(tiny_dataset, tmp_path):
    list(Engine(_config(tiny_dataset, tmp_path, epochs=4, explore_epochs=2, switch=3)).run())
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert [h["stage"] for h in history] == ["exploring", "exploring", "auto-encoding", "auto-decoding"]


def test_stop_saves_checkpoint_and_resume_continues(tiny_dataset, tmp_path):
    cfg = _config(tiny_dataset, tmp_path, epochs=3, switch=2)
    gen = Engine(cfg).run()
    snaps = [next(gen)]
    while snaps[-1].epoch < 1:
        snaps.append(gen.send(None))
    final = gen.send(Command("stop"))
    assert final.stage == Stage.DONE and "checkpoint" in final.message
    with pytest.raises(StopIteration):
        next(gen)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    stopped_epoch = final.epoch
    cfg.resume = True
    resumed = Engine(cfg)
    snaps = list(resumed.run())
    assert snaps[0].epoch == stopped_epoch  # continues where it stopped, not from 0
    assert snaps[-1].stage == Stage.DONE
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["stage"] for h in history] == ["exploring", "auto-encoding", "auto-decoding"]


def test_decoding_filters_the_pose_map_by_the_last_fsc_and_resume_keeps_it(
    tiny_dataset, tmp_path, monkeypatch
):
    masks = []  # what each pose block masks the map with: the sphere the halves' FSC is measured under
    frozen = HartleyVolume.frozen
    monkeypatch.setattr(
        HartleyVolume,
        "frozen",
        lambda v, weight=None, mask=None: masks.append(mask) or frozen(v, weight, mask),
    )
    cfg = _config(tiny_dataset, tmp_path, epochs=4, switch=2)
    engine = Engine(cfg)
    gen = engine.run()
    snap = next(gen)
    while snap.epoch < 3:
        snap = gen.send(None)
    decoded = [h for h in engine.model.history if h["stage"] == "auto-decoding" and h["fsc"] is not None]
    assert decoded, "no FSC was measured while decoding"
    assert engine.model.schedule.reference_fsc == [float(v) for v in decoded[-1]["fsc"][1]]
    weight = engine.model.schedule.reference_weight(engine.model.box, "cpu")
    assert weight.max() <= 1.0 and weight.min() >= 0.0 and weight[-1, -1, -1] < weight[16, 16, 16]
    assert masks and all(np.array_equal(m.cpu().numpy(), half_map_mask(engine.model.box)) for m in masks)
    gen.send(Command("stop"))
    cfg.resume = True
    resumed = Engine(cfg)
    next(resumed.run())
    assert resumed.model.schedule.reference_fsc == engine.model.schedule.reference_fsc


def test_run_writes_outputs_and_half_maps_are_disjoint(tiny_dataset, tmp_path):
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.physics.reconstruction import backproject

    eng = Engine(_config(tiny_dataset, tmp_path))
    snaps = list(eng.run())
    out = tmp_path / "run"
    for name in ("volume.mrc", "half_a.mrc", "half_b.mrc", "poses.star", "metrics.json", "fsc.png"):
        assert (out / name).exists(), name
    vol, voxel = read_volume(out / "volume.mrc")
    assert vol.shape == (32, 32, 32) and voxel == pytest.approx(eng.model.particles.pixel_size)
    poses = load_particles(out / "poses.star")
    assert len(poses) == 200 and poses.rotations is not None
    # The written half maps are backprojections of the engine's own halves (the ones it kept apart while
    # training), each from its particles only: rebuilding them from those halves gives the same maps.
    # Particles scored as junk (--junk auto, the default) are left out of both.
    halves = eng.model.halves.cpu().numpy()
    junk = poses.table["rlnParticleSelectZScore"].to_numpy() > Z_JUNK
    assert len(load_particles(out / "particles_kept.star")) == 200 - junk.sum()
    assert (f"{junk.sum()} junk left out" in snaps[-1].message) == (junk.sum() > 0)  # said only when so
    a, b = np.flatnonzero((halves == 0) & ~junk), np.flatnonzero((halves == 1) & ~junk)
    assert len(a) + len(b) + junk.sum() == 200 and abs(len(a) - len(b)) <= 1 + junk.sum()
    for name, members in (("half_a.mrc", a), ("half_b.mrc", b)):
        written, _ = read_volume(out / name)
        rebuilt = backproject(eng.model.particles, poses.rotations, poses.shifts, indices=members)
        other = backproject(
            eng.model.particles, poses.rotations, poses.shifts, indices=b if members is a else a
        )
        assert np.allclose(written, rebuilt, atol=1e-3 * np.abs(rebuilt).max())
        assert not np.allclose(written, other, atol=1e-3 * np.abs(other).max())
    assert snaps[-1].head_fractions.sum() == pytest.approx(1.0)
    assert snaps[-1].resolution is not None
    last = eng.config.epochs
    assert f"epoch {last}/{last} ·" in snaps[-2].message  # the last epoch's end counts no epoch beyond it
    assert all(f"epoch {last + 1}/" not in s.message for s in snaps)


def test_deterministic_under_seed(tiny_dataset, tmp_path):
    def losses(sub):
        eng = Engine(_config(tiny_dataset, tmp_path / sub, epochs=1, switch=None, eval_every=5))
        return [s.loss for s in eng.run()][:-1]

    assert losses("a") == losses("b")


def test_auto_switch_criterion():
    auto = AutoSwitch(min_epochs=2, head_stability=0.9, pose_change_deg=5, max_fraction=0.5)
    assert auto.should_switch(1, 20, 0.99, 1.0)[0] is False  # too early
    assert auto.should_switch(3, 20, 0.5, 1.0)[0] is False  # heads still hop
    assert auto.should_switch(3, 20, 0.95, 20.0)[0] is False  # poses still move
    assert auto.should_switch(3, 20, 0.95, 2.0)[0] is True
    assert auto.should_switch(10, 20, None, None)[0] is True  # budget spent


def test_bad_input_is_a_clear_error(tmp_path):
    from napari_cryospin.data.errors import ParticleFileError

    missing = tmp_path / "nope.star"
    with pytest.raises(ParticleFileError, match=r"nope\.star"):
        Engine(RunConfig(particles=str(missing), out=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="not available"):
        Engine(RunConfig(particles=str(missing), out=str(tmp_path / "o"), device="cuda:7"))
