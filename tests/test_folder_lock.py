"""One run per output folder: a second run is refused at once and touches nothing; a dead run's lock goes."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.folder_lock import LOCK_NAME, FolderInUseError, FolderLock
from napari_cryospin.engine.run_folder import claim_output, results_in
from tiny_run import TINY_RUN

OLD = ("volume.mrc", "poses.star", "run.json")
FAST = ["--heads", "2", "--epochs", "2", "--explore-epochs", "0", "--switch", "1", "--device", "cpu"]


def _old_run(out):
    out.mkdir(parents=True)
    for name in OLD:
        (out / name).write_text("the first run's")


def _untouched(out) -> bool:
    return all((out / name).read_text() == "the first run's" for name in OLD)


def test_a_second_run_on_a_locked_folder_is_refused_at_once_and_touches_nothing(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    with claim_output(out, resume=True):  # the first run, resuming there
        assert results_in(out) == ["poses.star", "run.json", "volume.mrc"]  # the lock is no result
        second = ["reconstruct", tiny_dataset / "particles.star", "--out", out, "--overwrite", *FAST]
        done = subprocess.run(
            [sys.executable, "-m", "napari_cryospin.cli", *map(str, second)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"cryospin reconstruct: error: {out}: another cryospin run is using this folder (pid {os.getpid()} "
        f"on host {socket.gethostname()}; lock file {LOCK_NAME}). Fix: wait for that run to end (or stop "
        "it), or choose another --out."
    ]
    assert _untouched(out)
    assert sorted(p.name for p in out.iterdir()) == ["poses.star", "run.json", "volume.mrc"]  # lock gone


def test_the_lock_holds_within_one_process_too_and_goes_on_a_refused_resume(tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    first = FolderLock(out)
    with pytest.raises(FolderInUseError, match=f"pid {os.getpid()} on host"):
        claim_output(out, overwrite=True)  # a second run of the same process (e.g. a second dock)
    assert _untouched(out)
    first.release()
    with pytest.raises(ValueError, match="holds the results of another run"):
        claim_output(out)  # refused for its results: the lock it took goes with the error
    claim_output(out, resume=True).release()
    assert not (out / LOCK_NAME).exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code = (
        "import os, signal, sys; from napari_cryospin.engine.folder_lock import FolderLock; "
        f"lock = FolderLock({str(out)!r}); os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert (out / LOCK_NAME).read_text().split()[1] == socket.gethostname()  # left behind, pid dead
    assert int((out / LOCK_NAME).read_text().split()[0]) != os.getpid()
    with claim_output(out):
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_a_run_holds_its_folder_until_its_last_file_is_written(tiny_dataset, tmp_path):
    quick = {**TINY_RUN, "epochs": 2, "explore_epochs": 0, "switch": 1}
    config = RunConfig(particles=str(tiny_dataset / "particles.star"), out=str(tmp_path / "run"), **quick)
    engine = Engine(config)
    with pytest.raises(FolderInUseError):
        Engine(RunConfig.from_dict({**config.to_dict(), "resume": True}))
    snaps = list(engine.run())
    assert snaps[-1].message.startswith("done") and (tmp_path / "run" / "run.json").exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    FolderLock(tmp_path / "run").release()  # free for the next run
