"""Shared pytest fixtures; each team prefixes its own (io_: particle I/O)."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tiny_run import TINY_RUN


@pytest.fixture
def io_write_stack(tmp_path: Path):
    """Factory writing a float32 MRC stack of random images; returns (path, data)."""

    def write(
        name: str = "stack.mrcs",
        n: int = 5,
        box: int = 16,
        pixel_size: float = 2.0,
        seed: int = 0,
        shape: tuple[int, ...] | None = None,
    ):
        data = np.random.default_rng(seed).normal(size=shape or (n, box, box)).astype(np.float32)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = pixel_size
        return path, data

    return write


SHARED = Path(__file__).resolve().parents[2] / "shared"
"""The folder beside the checkout holding the third-party dataset (absent outside this workplace)."""


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """200 simulated box-32 particles of the bundled map (SNR 0.5, ±1 px shifts): particles.star + truth."""
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    out = tmp_path_factory.mktemp("tiny")
    volume, voxel = read_volume(bundled_map_path(32))
    simulate_to_dir(volume, voxel, 200, out, snr=0.5, max_shift_px=1.0, seed=3)
    return out


@pytest.fixture
def ribosome_dir() -> Path:
    """The ribosome70s dataset; skips with the reason when ../shared is not beside the checkout."""
    path = SHARED / "data" / "ribosome70s"
    if not (path / "particles.star").exists():
        pytest.skip(f"third-party dataset not found at {path} (it lives in ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def finished_run(tiny_dataset, tmp_path_factory) -> Path:
    """A finished tiny run folder: 3 heads, 3 epochs (exploring, auto-encoding, auto-decoding), half maps."""
    from napari_cryospin.engine.config import RunConfig
    from napari_cryospin.engine.engine import Engine

    out = tmp_path_factory.mktemp("finished") / "run"
    config = RunConfig(
        particles=str(tiny_dataset / "particles.star"),
        out=str(out),
        **TINY_RUN,
        snapshot_interval_s=5.0,
        eval_every=1,
    )
    for _ in Engine(config).run():
        pass
    return out
