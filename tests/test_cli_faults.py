"""The CLI under faults: kill -9 and resume, SIGINT/SIGTERM, a full disk, a read-only folder, nonsense input.

Each failure must end as one line on stderr (no traceback) with a non-zero exit status, and must neither
mix nor lose results. Runs are tiny (box 32, 100 particles, 2 epochs, CPU).
"""

import ctypes
import errno
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_cryospin.cli import main
from napari_cryospin.data import safe_write
from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine import distributed
from napari_cryospin.engine.checkpoint import load_checkpoint
from napari_cryospin.engine.error_funnel import explain

TINY = [
    "--heads", "2", "--epochs", "2", "--explore-epochs", "0", "--switch", "1", "--device", "cpu",
    "--encoder-width", "4", "--encoder-box", "16", "--batch-size", "50", "--max-particles", "100",
]  # fmt: skip
RESULTS = ("volume.mrc", "half_a.mrc", "half_b.mrc")
LIMIT_S = 600


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "napari_cryospin.cli", *map(str, args)]


def _run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), capture_output=True, text=True, timeout=LIMIT_S, **kwargs)


def _stderr_lines(text: str) -> list[str]:
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()]


def _same_results(a: Path, b: Path) -> None:
    for name in RESULTS:
        np.testing.assert_array_equal(read_volume(a / name)[0], read_volume(b / name)[0], err_msg=name)
    pa, pb = load_particles(a / "poses.star"), load_particles(b / "poses.star")
    np.testing.assert_array_equal(pa.rotations, pb.rotations)
    np.testing.assert_array_equal(pa.shifts, pb.shifts)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def timed_run(tiny_dataset, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted tiny CLI run, and how long after its first checkpoint it marked itself complete
    (``run.json``, seconds): the span in which a kill interrupts it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    args = ["reconstruct", tiny_dataset / "particles.star", "--out", out, *TINY]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reader = _Reader(proc.stderr)
    reader.start()
    _wait_for(lambda: (out / "checkpoint.pt").exists(), proc, "the first checkpoint")
    checkpointed = time.monotonic()
    while not (out / "run.json").exists() and time.monotonic() < checkpointed + LIMIT_S:
        time.sleep(0.01)
    span = time.monotonic() - checkpointed
    assert proc.wait(timeout=LIMIT_S) == 0, reader.text[-3000:]
    return out, span


@pytest.fixture(scope="module")
def finished_run(timed_run) -> Path:
    """An uninterrupted tiny CLI run."""
    return timed_run[0]


class _Reader(threading.Thread):
    """Collects a pipe's text as it comes (tqdm writes without newlines)."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.chunks = pipe, []

    def run(self) -> None:
        for chunk in iter(lambda: os.read(self.pipe.fileno(), 4096), b""):
            self.chunks.append(chunk.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {LIMIT_S} s"
        time.sleep(0.05)


def test_kill_9_at_a_random_point_then_resume_gives_the_same_map(tiny_dataset, timed_run, tmp_path):
    finished_run, tail_s = timed_run
    out = tmp_path / "run"
    args = ["reconstruct", tiny_dataset / "particles.star", "--out", out, *TINY]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (out / "checkpoint.pt").exists(), proc, "the first checkpoint")
    delay = random.uniform(0.0, 0.5 * tail_s)  # within the first half of the span before run.json
    time.sleep(delay)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, f"the run finished within {delay:.2f} s of its first checkpoint"
    assert not (out / "run.json").exists(), f"{delay:.2f} s of {tail_s:.2f} s"
    resumed = _run_cli(*args, "--resume")
    assert resumed.returncode == 0, f"killed {delay:.2f} s after the checkpoint: {resumed.stderr[-3000:]}"
    _same_results(finished_run, out)
    assert (out / "run.json").exists() and _temporaries(out) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_at_the_next_step_with_a_checkpoint(tiny_dataset, tmp_path, sig):
    out = tmp_path / "run"
    args = ["reconstruct", tiny_dataset / "particles.star", "--out", out, *TINY]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = _Reader(proc.stderr)
    reader.start()
    _wait_for(lambda: "epoch 1/2" in reader.text, proc, "the first snapshot")
    proc.send_signal(sig)
    assert proc.wait(timeout=LIMIT_S) == 128 + sig
    reader.join(timeout=10)
    lines = _stderr_lines(reader.text)
    assert "Traceback" not in reader.text
    name = signal.Signals(sig).name
    stopped = re.match(
        rf"cryospin reconstruct: {name}: stopped at epoch (\d); checkpoint saved in ", lines[-1]
    )
    assert stopped, lines[-1]
    assert lines[-1].endswith(f"({out / 'checkpoint.pt'}); continue it with --resume")
    assert load_checkpoint(out)["epoch"] == int(stopped[1]) - 1  # the line tells where the run stopped
    assert not (out / "volume.mrc").exists() and not (out / "run.json").exists()


def test_full_disk_is_one_line_and_keeps_the_previous_results(
    tiny_dataset, finished_run, tmp_path, capsys, monkeypatch
):
    out = Path(shutil.copytree(finished_run, tmp_path / "run"))
    before = {name: (out / name).read_bytes() for name in (*RESULTS, "poses.star", "checkpoint.pt")}

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(safe_write.os, "replace", no_space)
    left = []  # how the run left its process group: an error must not wait at a barrier for the others
    monkeypatch.setattr(distributed, "shutdown", lambda together=True: left.append(together))
    code = main(["reconstruct", str(tiny_dataset / "particles.star"), "--out", str(out), *TINY, "--resume"])
    err = _stderr_lines(capsys.readouterr().err)
    assert code == 1 and "Traceback" not in "".join(err)
    assert err[-1].startswith(f"cryospin reconstruct: error: {out / 'volume.mrc'}: No space left on device")
    assert "Fix: free space" in err[-1]
    assert {name: (out / name).read_bytes() for name in before} == before
    assert _temporaries(out) == []
    assert left == [False]


def _file_size_limit(limit_bytes: int):
    """For a child process, before exec: files may grow to ``limit_bytes`` (as after ``ulimit -f``)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return limit


def test_a_file_size_limit_at_the_checkpoint_is_one_line_naming_it(tiny_dataset, tmp_path):
    """1 MiB holds every output but the checkpoint (~4 MB): the OS error is named, not torch's own."""
    out = tmp_path / "run"
    args = ("reconstruct", tiny_dataset / "particles.star", "--out", out, *TINY)
    done = _run_cli(*args, preexec_fn=_file_size_limit(1 << 20))
    lines = _stderr_lines(done.stderr)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert lines[-1] == (
        f"cryospin reconstruct: error: {out / 'checkpoint.pt'}: File too large "
        "(the file passed a size limit: the shell's `ulimit -f` or the file system's largest file). "
        "Fix: raise the limit (`ulimit -f unlimited`) or choose --out on another disk; "
        "files already there were left as they were."
    )
    assert not (out / "checkpoint.pt").exists() and _temporaries(out) == []


def _write_each_output(kind: str, path: Path, particles_star: Path) -> None:
    from matplotlib.figure import Figure
    from scipy.spatial.transform import Rotation

    from napari_cryospin.data.mrc import write_volume
    from napari_cryospin.data.poses_out import write_poses_star

    if kind == "mrc":
        write_volume(path, np.random.default_rng(0).random((32, 32, 32), np.float32), 1.0)
    elif kind == "npz":
        safe_write.save_npz(path, volume=np.random.default_rng(0).random(10_000))
    elif kind == "json":
        safe_write.write_json(path, {"fsc": list(range(10_000))})
    elif kind == "png":
        figure = Figure()
        figure.add_subplot().imshow(np.random.default_rng(0).random((300, 300)))
        safe_write.save_figure(figure, path)
    else:
        particles = load_particles(particles_star)
        n = len(particles)
        write_poses_star(path, particles, Rotation.random(n, random_state=0).as_matrix(), np.zeros((n, 2)))


@pytest.mark.parametrize("kind", ["mrc", "npz", "json", "png", "star"])
def test_every_writer_lets_the_os_error_through_naming_its_file(tiny_dataset, tmp_path, kind):
    """Each output format, written under a 4 kB file-size limit: the funnel sees EFBIG and the file."""
    path = tmp_path / f"output.{kind}"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as err:
            _write_each_output(kind, path, tiny_dataset / "particles.star")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert err.value.errno == errno.EFBIG
    assert explain(err.value).startswith(f"{path}: File too large (the file passed a size limit")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "(the disk is full). Fix: free space or choose --out on another disk;"),
        (errno.EDQUOT, "(your disk quota is used up). Fix: free space within your quota"),
        (errno.EFBIG, "(the file passed a size limit"),
        (errno.EACCES, ". Fix: choose a folder you can write to (--out), or change its permissions."),
        (errno.EROFS, ". Fix: choose a folder you can write to (--out), or change its permissions."),
    ],
)
def test_the_funnel_names_each_os_error_with_the_file(code, says):
    line = explain(OSError(code, os.strerror(code), "/x/.checkpoint.pt.123.tmp"))  # the temporary file
    assert line.startswith(f"/x/checkpoint.pt: {os.strerror(code)}") and says in line
    assert line.count("Fix:") == 1 and "report it" not in line


def _without_root_file_powers() -> None:
    """In the child, before exec: drop root's power to ignore file permissions (Linux capabilities)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_read_only_output_folder_is_one_line_before_any_work(tiny_dataset, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    as_user = {"preexec_fn": _without_root_file_powers} if os.geteuid() == 0 else {}
    try:
        done = _run_cli("reconstruct", tiny_dataset / "particles.star", "--out", out, *TINY, **as_user)
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert _stderr_lines(done.stderr) == [
        f"cryospin reconstruct: error: {out}: Permission denied. Fix: choose a folder you can write to "
        "(--out), or change its permissions."
    ]


@pytest.fixture
def one_particle(tmp_path) -> Path:
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    volume, voxel = read_volume(bundled_map_path(32))
    simulate_to_dir(volume, voxel, 1, tmp_path / "one", snr=0.5, seed=0)
    return tmp_path / "one" / "particles.star"


NONSENSE = [
    (["--epochs", "0"], "--epochs must be an integer ≥ 1, got 0"),
    (["--epochs", "-3"], "--epochs must be an integer ≥ 1, got -3"),
    (["--heads", "0"], "--heads must be an integer ≥ 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer ≥ 1, got 0"),
    (["--explore-epochs", "-1"], "--explore-epochs must be an integer ≥ 0, got -1"),
    (["--switch", "-1"], "--switch must be an epoch number ≥ 0, 'auto' or 'manual', got -1"),
    (["--max-particles", "0"], "--max-particles must be an integer ≥ 1 (or left out), got 0"),
    (["--box", "17"], "--box must be an even number of pixels ≥ 16, got 17"),
    (["--device", "foo"], "--device must be one of auto, cuda, cuda:N, mps, cpu; got 'foo'"),
    (["--seed", "-2"], "--seed must be an integer ≥ 0, got -2"),
    (["--max-particles", "50"], "50 particles, but a meaningful map needs at least 100"),
    (["--resume"], "checkpoint.pt: no checkpoint to resume from. Fix: start a new run without --resume."),
]


@pytest.mark.parametrize(("extra", "says"), NONSENSE, ids=[" ".join(a) for a, _ in NONSENSE])
def test_nonsense_settings_are_one_line_and_write_nothing(tiny_dataset, tmp_path, capsys, extra, says):
    out = tmp_path / "run"
    code = main(["reconstruct", str(tiny_dataset / "particles.star"), "--out", str(out), *extra])
    err = _stderr_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("cryospin reconstruct: error: ") and says in err[0] and "Fix:" in err[0]
    assert not out.exists() or list(out.iterdir()) == []


def test_one_particle_is_refused(one_particle, tmp_path, capsys):
    assert main(["reconstruct", str(one_particle), "--out", str(tmp_path / "run")]) == 2
    (line,) = _stderr_lines(capsys.readouterr().err)
    assert f"{one_particle}: 1 particle, but a meaningful map needs at least 100" in line


def test_output_that_is_a_file_or_another_run_is_refused(tiny_dataset, finished_run, tmp_path, capsys):
    star = str(tiny_dataset / "particles.star")
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert main(["reconstruct", star, "--out", str(existing)]) == 2
    assert main(["backproject", str(tiny_dataset / "truth.star"), "--out", str(finished_run)]) == 2
    first, second = _stderr_lines(capsys.readouterr().err)
    assert first == (
        f"cryospin reconstruct: error: {existing}: is a file, not a folder. "
        "Fix: give --out a folder (a new or empty one)."
    )
    assert second.startswith(
        f"cryospin backproject: error: {finished_run}: holds the results of another run ("
    )
    assert existing.read_text() == "mine" and (finished_run / "run.json").exists()


def test_backproject_checks_device_and_overwrites_only_on_request(
    tiny_dataset, finished_run, tmp_path, capsys
):
    truth = str(tiny_dataset / "truth.star")
    assert main(["backproject", truth, "--out", str(tmp_path / "bp"), "--device", "foo"]) == 2
    (line,) = _stderr_lines(capsys.readouterr().err)
    assert line.startswith(
        "cryospin backproject: error: --device must be one of auto, cuda, cuda:N, mps, cpu"
    )
    out = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (out / "notes.txt").write_text("mine")
    assert main(["backproject", truth, "--out", str(out), "--overwrite"]) == 0
    kept = sorted(p.name for p in out.iterdir())
    assert kept == ["fsc.json", "fsc.png", "half_a.mrc", "half_b.mrc", "notes.txt", "run.json", "volume.mrc"]


def test_debug_shows_the_traceback_and_the_line(tiny_dataset, tmp_path):
    done = _run_cli(
        "--debug", "reconstruct", tiny_dataset / "particles.star", "--out", tmp_path, "--heads", "0"
    )
    assert done.returncode == 2 and "Traceback (most recent call last)" in done.stderr
    assert _stderr_lines(done.stderr)[-1].startswith("cryospin reconstruct: error: --heads must be")
