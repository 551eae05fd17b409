"""Shared pytest fixtures; each team prefixes its own (io_: particle I/O)."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest


@pytest.fixture
def io_write_stack(tmp_path: Path):
    """Factory writing a float32 MRC stack of random images; returns (path, data)."""

    def write(name: str = "stack.mrcs", n: int = 5, box: int = 16, pixel_size: float = 2.0,
              seed: int = 0, shape: tuple[int, ...] | None = None):
        data = np.random.default_rng(seed).normal(size=shape or (n, box, box)).astype(np.float32)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = pixel_size
        return path, data

    return write
