"""The simulated sample particles are cached in a folder of this user's own, never in a planted one."""

import os
import stat
import tempfile

import pytest

from napari_cryospin._napari._sample_data import simulated_particle_dir
from napari_cryospin.simulation import simulate as simulation


@pytest.fixture
def fake_simulation(tmp_path, monkeypatch):
    """A private temporary folder (tmp_path) and a simulation that writes a stand-in particles.star."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []

    def simulate(volume, voxel, n, out, **kwargs):
        made.append(out)
        (out / "particles.star").write_text("simulated")

    monkeypatch.setattr(simulation, "simulate_to_dir", simulate)
    return made


def _private(folder) -> bool:
    info = folder.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def test_the_sample_is_made_once_in_a_folder_only_this_user_can_open(fake_simulation):
    folder = simulated_particle_dir()
    assert (folder / "particles.star").read_text() == "simulated" and _private(folder.parent)
    assert folder.parent.name == f"napari-cryospin-sample-{os.getuid()}"
    assert simulated_particle_dir() == folder and len(fake_simulation) == 1  # cached


def test_a_planted_sample_folder_is_never_read(fake_simulation, tmp_path):
    planted = [tmp_path / "napari-cryospin-sample", tmp_path / f"napari-cryospin-sample-{os.getuid()}"]
    for folder in planted:  # the old shared name, and this user's name made by someone else first
        (folder / "particles").mkdir(parents=True)
        folder.chmod(0o777)
        for star in (folder / "particles.star", folder / "particles" / "particles.star"):
            star.write_text("planted")
    folder = simulated_particle_dir()
    assert (folder / "particles.star").read_text() == "simulated" and _private(folder.parent)
    assert not any(folder.is_relative_to(p) for p in planted)
    assert all((p / "particles" / "particles.star").read_text() == "planted" for p in planted)  # left alone
