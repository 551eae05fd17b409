"""Output folders (refuse, overwrite exactly a run's files, resume), atomic writes and the error funnel."""

import errno
import json
import os
import subprocess

import numpy as np
import pytest

from napari_cryospin.data import safe_write
from napari_cryospin.engine.error_funnel import exit_status, explain
from napari_cryospin.engine.run_folder import (
    OutputFolderError,
    prepare_output,
    results_in,
    write_run_record,
)


def _fake_run(out):
    out.mkdir(parents=True)
    for name in ("volume.mrc", "poses.star", "metrics.json", "checkpoint.pt", "run.json", ".fsc.png.77.tmp"):
        (out / name).write_text("old")
    (out / "epochs").mkdir()
    (out / "epochs" / "epoch_000.npz").write_text("old")


def test_a_folder_with_another_runs_results_is_refused(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    with pytest.raises(OutputFolderError) as err:
        prepare_output(out)
    message = str(err.value)
    assert message.startswith(f"{out}: holds the results of another run (")
    assert "--resume" in message and "--overwrite" in message
    assert (out / "volume.mrc").read_text() == "old"


def test_overwrite_removes_exactly_the_runs_files(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    (out / "notes.txt").write_text("mine")
    (out / "data.star").write_text("mine")
    (out / "epochs" / "mine.txt").write_text("mine")
    prepare_output(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["data.star", "epochs", "notes.txt"]
    assert [p.name for p in (out / "epochs").iterdir()] == ["mine.txt"]
    assert results_in(out) == []


def test_overwrite_of_a_clean_run_leaves_no_epochs_folder(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    prepare_output(out, overwrite=True)
    assert list(out.iterdir()) == []


def test_resume_keeps_the_results_and_an_empty_folder_is_fine(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    found = prepare_output(out, resume=True)
    assert "checkpoint.pt" in found and "epochs/" in found and (out / "volume.mrc").exists()
    prepare_output(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper").is_dir()


def test_an_existing_file_as_output_folder_is_refused(tmp_path):
    path = tmp_path / "volume.mrc"
    path.write_text("a file")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        prepare_output(path)
    assert path.read_text() == "a file"


def test_run_record_names_what_ran_and_the_outputs(tmp_path):
    (tmp_path / "volume.mrc").write_text("x")
    identity = {"path": "/p.star", "count": 200, "box": 32, "pixel_size": 2.0, "fingerprint": "ab"}
    write_run_record(tmp_path, "backproject", {"seed": 0}, identity)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["command"] == "cryospin backproject" and record["input"] == identity
    assert record["outputs"] == ["volume.mrc"] and record["version"] and record["finished"]


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stage", ["write", "rename"])
def test_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, stage):
    path = tmp_path / "metrics.json"
    safe_write.write_json(path, {"epoch": 1})
    if stage == "write":
        monkeypatch.setattr(safe_write, "open", _failing_open, raising=False)
    else:
        monkeypatch.setattr(safe_write.os, "replace", _no_space)
    with pytest.raises(OSError) as err:
        safe_write.write_json(path, {"epoch": 2})
    assert err.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _failing_open(path, mode="r"):
    """An open() whose file takes a few bytes, then reports a full disk (as a real full disk does)."""

    class Full:
        def __init__(self):
            self.fh = open(path, mode)  # noqa: SIM115

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:3])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return Full()


def test_npz_and_figure_writes_are_atomic(tmp_path):
    from matplotlib.figure import Figure

    safe_write.save_npz(tmp_path / "epoch_000.npz", volume=np.arange(4.0))
    np.testing.assert_array_equal(np.load(tmp_path / "epoch_000.npz")["volume"], np.arange(4.0))
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    safe_write.save_figure(fig, tmp_path / "fsc.png")
    assert (tmp_path / "fsc.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000.npz", "fsc.png"]


def test_funnel_lines_keep_the_cause_and_name_the_real_file(tmp_path):
    tmp = safe_write.temp_path(tmp_path / "volume.mrc")
    line = explain(OSError(errno.ENOSPC, "No space left on device", str(tmp)))
    assert line.startswith(f"{tmp_path / 'volume.mrc'}: No space left on device") and "Fix:" in line
    line = explain(PermissionError(errno.EACCES, "Permission denied", "/ro/run"))
    assert line.startswith("/ro/run: Permission denied. Fix: choose a folder you can write to")
    line = explain(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"))
    assert (
        line.startswith("out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)") and "\n" not in line
    )
    line = explain(RuntimeError("Expected all tensors to be on the same device\nmore"))
    assert line.startswith("torch failed: Expected all tensors to be on the same device. Fix:")
    assert explain(KeyError("volume")).startswith("KeyError: 'volume'. Fix: run again with --debug")
    assert [exit_status(e) for e in (ValueError(), OSError(), RuntimeError(), KeyboardInterrupt())] == [
        2,
        1,
        1,
        130,
    ]


def test_resume_removes_only_the_temporaries_of_dead_writers(tmp_path):
    from napari_cryospin.engine.run_folder import begin_resume

    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs: a writer killed mid-write
    (tmp_path / "epochs").mkdir()
    stale = [tmp_path / f".fsc.png.{dead.pid}.tmp", tmp_path / "epochs" / f".epoch_001.npz.{dead.pid}.tmp"]
    live = tmp_path / f".metrics.json.{os.getpid()}.tmp"
    for path in (*stale, live):
        path.write_bytes(b"partial")
    begin_resume(tmp_path)
    assert not any(p.exists() for p in stale)
    assert live.exists()


def test_overwrite_never_deletes_through_a_symbolic_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    theirs = ["epoch_000.npz", "epoch_001.npz", "volume.mrc"]
    for name in theirs:
        (elsewhere / name).write_text("not this run's")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    (out / "epochs").symlink_to(elsewhere, target_is_directory=True)
    (out / "half_a.mrc").symlink_to(elsewhere / "volume.mrc")
    assert "epochs/" in results_in(out)
    prepare_output(out, overwrite=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == theirs
    assert all((elsewhere / name).read_text() == "not this run's" for name in theirs)
    assert list(out.iterdir()) == []  # the links themselves went, with the run's own file
