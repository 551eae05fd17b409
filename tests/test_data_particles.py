"""load_particles dispatch: bare stacks (no CTF) and unknown file types."""

import numpy as np
import pytest

from napari_cryospin.data.errors import ParticleFileError
from napari_cryospin.data.particles import load_particles


def test_bare_stack_has_no_ctf(io_write_stack):
    path, data = io_write_stack("parts.mrcs", n=3, box=16, pixel_size=2.0)
    ps = load_particles(path, box=8)
    assert ps.ctf is None and ps.rotations is None and len(ps) == 3
    assert ps.box == 8 and ps.pixel_size == pytest.approx(4.0)
    assert ps.stack[:].shape == (3, 8, 8)
    np.testing.assert_allclose(ps.stack[:].mean(axis=(1, 2)), data.mean(axis=(1, 2)), atol=1e-5)


def test_bare_stack_without_pixel_size_and_unknown_suffix(io_write_stack, tmp_path):
    path, _ = io_write_stack("nopix.mrcs", n=2, pixel_size=0.0)
    with pytest.raises(ParticleFileError, match=r"nopix\.mrcs: the MRC header holds no pixel size"):
        load_particles(path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ParticleFileError, match=r"x\.txt: unknown particle file type"):
        load_particles(tmp_path / "x.txt")


def test_odd_box_is_refused(io_write_stack):
    path, _ = io_write_stack("parts.mrcs", n=2, box=16)
    with pytest.raises(ParticleFileError, match=r"parts\.mrcs: cannot serve images at box 7"):
        load_particles(path, box=7)
