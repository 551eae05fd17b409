"""Fixtures of the napari layer (prefix ui_): Qt offscreen without a display, tiny data, made-up snapshots."""

import os
from pathlib import Path

import healpy
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from napari_cryospin.engine.events import ParticleView, Snapshot, Stage

HEADS = 4


@pytest.fixture(scope="session", autouse=True)
def ui_discover_plugins():
    """Register installed plugins (this one included) with npe2, as napari does at start."""
    import npe2

    npe2.PluginManager.instance().discover()


@pytest.fixture(autouse=True)
def ui_layout_file(tmp_path, monkeypatch) -> Path:
    """Each test remembers the docks' places in a file of its own, never in the user's config folder."""
    from napari_cryospin._napari import _layout

    path = tmp_path / "layout.ini"
    monkeypatch.setattr(_layout, "layout_file", lambda: path)
    return path


@pytest.fixture
def ui_viewer(qtbot):
    """A GUI-free ViewerModel (no OpenGL needed)."""
    from napari.components import ViewerModel

    return ViewerModel()


def _particle_view(stage: Stage, heads: int, index: int, nside: int = 8) -> ParticleView:
    rng = np.random.default_rng(index)
    candidates = Rotation.random(heads if stage == Stage.ENCODING else 1, random_state=index).as_matrix()
    losses = rng.uniform(1.0, 2.0, len(candidates))
    winner = int(np.argmin(losses))
    grid = np.stack(healpy.pix2vec(nside, np.arange(12 * nside**2)), axis=-1)
    log_post = 40.0 * grid @ candidates[winner][:, 2]
    log_post -= np.log(np.exp(log_post - log_post.max()).sum()) + log_post.max()
    path = np.zeros((0, 3, 3))
    if stage == Stage.DECODING:
        steps = Rotation.from_rotvec(np.linspace([0, 0, 0], [0.0, 0.6, 0.3], 6))
        path = (Rotation.from_matrix(candidates[0]) * steps.inv()).as_matrix()
    yy, xx = np.mgrid[-16:16, -16:16]
    image = np.exp(-(xx**2 + yy**2) / 50.0) + 0.3 * rng.normal(size=xx.shape)
    return ParticleView(
        index, image, np.exp(-(xx**2 + yy**2) / 50.0), candidates, losses, winner, path, log_post
    )


@pytest.fixture
def ui_snapshot():
    """Factory of plausible snapshots: a blob volume, head shares, a particle view, FSC."""

    def make(
        stage: Stage = Stage.ENCODING,
        heads: int = HEADS,
        particle: int = 0,
        elapsed: float = 1.0,
        volume: bool = True,
    ) -> Snapshot:
        zz, yy, xx = np.mgrid[-8:8, -8:8, -8:8]
        shares = np.random.default_rng(heads).dirichlet(np.ones(heads))
        frequency = np.linspace(0, 0.25, 9)
        return Snapshot(
            epoch=1,
            step=10,
            stage=stage,
            progress=0.3,
            elapsed_s=elapsed,
            images_per_s=250.0,
            loss=0.5,
            voxel_size=2.5,
            volume=np.exp(-(xx**2 + yy**2 + zz**2) / 20.0).astype(np.float32) if volume else None,
            head_fractions=shares,
            particle=_particle_view(stage, heads, particle),
            resolution=12.0,
            fsc=(frequency, np.clip(1.1 - 5 * frequency, 0, 1)),
        )

    return make


@pytest.fixture(scope="session")
def ui_tiny_particles(tmp_path_factory) -> Path:
    """200 simulated particles of the bundled box-32 map, with CTF: the STAR file."""
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    folder = tmp_path_factory.mktemp("tiny")
    volume, voxel = read_volume(bundled_map_path(32))
    simulate_to_dir(volume, voxel, 200, folder, snr=0.1, seed=0)
    return folder / "particles.star"
