"""Checkpoints hold only tensors and plain values, run no code when read, and refuse a mismatched resume."""

import errno
import os
import pickle
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cryospin.cli import main
from napari_cryospin.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.events import Command, Stage
from napari_cryospin.physics.reconstruction import Accumulator

SETTINGS = dict(
    heads=3,
    epochs=2,
    explore_epochs=1,
    switch=1,
    device="cpu",
    encoder_width=4,
    encoder_box=16,
    batch_size=50,
    snapshot_interval_s=0.0,
)


@pytest.fixture(scope="module")
def stopped_run(tiny_dataset, tmp_path_factory) -> Path:
    """A run folder whose engine was stopped after its first exploration step (public API only)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    cfg = RunConfig(particles=str(tiny_dataset / "particles.star"), out=str(out), **SETTINGS)
    gen = Engine(cfg).run()
    assert next(gen).stage == Stage.EXPLORING
    assert "checkpoint" in gen.send(Command("stop")).message
    return out


def _copy(stopped_run, tmp_path) -> Path:
    return Path(shutil.copytree(stopped_run, tmp_path / "run"))


def _resume(tiny_dataset, out, particles=None, **changes) -> Engine:
    settings = {**SETTINGS, **changes}
    particles = particles or tiny_dataset / "particles.star"
    return Engine(RunConfig(particles=str(particles), out=str(out), resume=True, **settings))


def test_checkpoint_loads_weights_only_and_restores_arrays_and_sums(stopped_run):
    raw = torch.load(stopped_run / "checkpoint.pt", weights_only=True)  # raises if anything else is inside
    assert raw["input"]["count"] == 200 and raw["config"]["heads"] == 3
    state = load_checkpoint(stopped_run)
    assert isinstance(state["perm"], np.ndarray) and state["perm"].dtype == np.int64
    assert sorted(state["perm"]) == list(range(200))
    sums = [acc for acc in state["explore_sums"] if acc is not None]  # one running sum per half map
    assert sums and all(isinstance(acc, Accumulator) and acc.num.is_complex() for acc in sums)


def test_state_round_trips_through_a_checkpoint(tmp_path):
    state = {
        "perm": np.array([2, 0, 1]),
        "sums": Accumulator(torch.ones(2, dtype=torch.complex64), torch.zeros(2)),
        "history": [{"resolution": np.float64(12.5), "fsc": [[0.0, 0.1], [1.0, 0.5]]}],
        "config": {"heads": 3},
        "input": {},
        "stage": "auto-encoding",
        "epoch": 1,
        "pos": 0,
        "volume": {},
        "encoder": {},
    }
    save_checkpoint(tmp_path, state)
    back = load_checkpoint(tmp_path)
    np.testing.assert_array_equal(back["perm"], state["perm"])
    assert torch.equal(back["sums"].num, state["sums"].num) and back["history"] == state["history"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_full_disk_while_checkpointing_is_the_os_error_and_keeps_the_last_checkpoint(tmp_path):
    """torch.save's own writer hides the OS error; written through our file object, EFBIG comes out."""
    save_checkpoint(tmp_path, {"epoch": 0, "volume": torch.zeros(10)})
    before = (tmp_path / "checkpoint.pt").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))  # as `ulimit -f 64`
    try:
        with pytest.raises(OSError) as err:
            save_checkpoint(tmp_path, {"epoch": 1, "volume": torch.zeros(100_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert err.value.errno == errno.EFBIG and err.value.filename == str(tmp_path / "checkpoint.pt")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class _Payload:
    """Unpickling this creates a file: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_runs_no_code_on_resume(tiny_dataset, stopped_run, tmp_path, capsys):
    out = _copy(stopped_run, tmp_path)
    marker = tmp_path / "pwned"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["history"] = [_Payload(marker)]
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(pickle.UnpicklingError):  # the payload is really there: weights_only refuses it
        torch.load(out / "checkpoint.pt", weights_only=True)
    args = ["reconstruct", str(tiny_dataset / "particles.star"), "--out", str(out), "--resume"]
    code = main([*args, "--heads", "3", "--epochs", "2", "--explore-epochs", "1", "--switch", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not marker.exists()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "holds objects other than tensors and plain values" in err and "nothing in it was run" in err


class _MakeDir:
    """Unpickling this calls os.mkdir (torch blocks the os module outright): the folder proves it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


CRAFTED = {
    "allowed module": lambda path, marker: torch.save({"config": _Payload(marker)}, path),
    "blocked module": lambda path, marker: torch.save({"config": _MakeDir(marker)}, path),
    "legacy format": lambda path, marker: torch.save(
        {"config": _MakeDir(marker)}, path, _use_new_zipfile_serialization=False
    ),
    "plain pickle": lambda path, marker: path.write_bytes(pickle.dumps({"config": _MakeDir(marker)})),
}


@pytest.mark.parametrize("craft", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_crafted_checkpoint_is_refused_without_torchs_advice(tmp_path, recwarn, craft):
    """No code runs, and the line never repeats torch's 'weights_only=False' (what a user must not do)."""
    marker = tmp_path / "pwned"
    craft(tmp_path / "checkpoint.pt", marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert not marker.exists()
    assert "weights_only" not in message and "\n" not in message
    assert message.startswith(f"{tmp_path / 'checkpoint.pt'}: not a checkpoint this program wrote")
    assert "refused for safety (nothing in it was run)" in message and "--overwrite" in message
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # torch's "file an issue" warning


@pytest.mark.parametrize("keep", [0.5, 20_000, 100])
def test_a_truncated_checkpoint_is_one_clear_line(tiny_dataset, stopped_run, tmp_path, capsys, keep):
    out = _copy(stopped_run, tmp_path)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: int(keep * len(data)) if keep < 1 else keep])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: damaged or not a checkpoint \(.+\)\. Fix:"):
        load_checkpoint(out)
    args = ["reconstruct", str(tiny_dataset / "particles.star"), "--out", str(out), "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "damaged or not a checkpoint" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"heads": 4}, "--heads 4 (checkpoint: 3)"),
        ({"seed": 1}, "--seed 1 (checkpoint: 0)"),
        (
            {"box": 16},
            "differs from its checkpoint: --box 16 (checkpoint: unset). Fix: resume without --box,",
        ),
        ({"epochs": 3}, "--epochs 3 (checkpoint: 2)"),
        ({"max_particles": 150}, "--max-particles 150 (checkpoint: unset)"),
    ],
)
def test_resume_with_other_settings_is_refused_before_any_work(
    tiny_dataset, stopped_run, tmp_path, changes, named
):
    out = _copy(stopped_run, tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError) as err:
        _resume(tiny_dataset, out, **changes)
    message = str(err.value)
    assert message.startswith(f"{out / 'checkpoint.pt'}: cannot resume") and named in message
    assert ("Fix: resume with --" in message or "Fix: resume without --" in message) and "\n" not in message
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_with_another_particle_file_is_refused(tiny_dataset, stopped_run, tmp_path):
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    volume, voxel = read_volume(bundled_map_path(32))
    simulate_to_dir(volume, voxel, 200, tmp_path / "other", snr=0.5, max_shift_px=1.0, seed=4)
    out = _copy(stopped_run, tmp_path)
    with pytest.raises(
        CheckpointError, match=r"cannot resume.*images [0-9a-f]{16} \(checkpoint: [0-9a-f]{16}"
    ):
        _resume(tiny_dataset, out, particles=tmp_path / "other" / "particles.star")


def test_resume_may_change_the_device_and_half_maps(tiny_dataset, stopped_run, tmp_path):
    out = _copy(stopped_run, tmp_path)
    engine = _resume(tiny_dataset, out, device="auto", half_maps=False)
    assert engine.model.n == 200
