"""Fourier cropping keeps low frequencies and scale; ParticleStack serves, crops and checks images."""

import mrcfile
import numpy as np
import pytest

from napari_cryospin.data.downsample import ParticleStack, fourier_crop
from napari_cryospin.data.errors import ParticleFileError


def test_fourier_crop_of_a_constant_stays_that_constant():
    out = fourier_crop(np.full((2, 32, 32), 3.25), 16)
    assert out.shape == (2, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, 3.25, atol=1e-5)


def test_fourier_crop_of_a_band_limited_image_resamples_it():
    def image(box):
        c = np.arange(box) - box // 2
        x, y = np.meshgrid(c / box, c / box)  # fraction of the field of view, centre at L//2
        return np.cos(2 * np.pi * 3 * x + 0.4) + 0.5 * np.sin(2 * np.pi * (2 * x - 5 * y))

    out = fourier_crop(image(64)[None], 32)[0]
    np.testing.assert_allclose(out, image(32), atol=1e-5)


def test_fourier_crop_rejects_odd_or_larger_boxes():
    with pytest.raises(ValueError):
        fourier_crop(np.zeros((1, 16, 16)), 15)
    with pytest.raises(ValueError):
        fourier_crop(np.zeros((1, 16, 16)), 32)


def test_particle_stack_serves_several_files_in_order(io_write_stack):
    a, da = io_write_stack("a.mrcs", n=4, box=16, seed=1)
    b, db = io_write_stack("b.mrcs", n=3, box=16, seed=2)
    stack = ParticleStack([a, b], np.array([1, 0, 0, 1]), np.array([2, 3, 0, 0]))
    assert len(stack) == 4 and stack.box == 16
    np.testing.assert_array_equal(stack[:], np.stack([db[2], da[3], da[0], db[0]]))
    np.testing.assert_array_equal(stack[np.array([3, 0])], np.stack([db[0], db[2]]))
    assert stack.stack(0) is stack.stack(0)
    sub = stack.subset([1, 2])
    np.testing.assert_array_equal(sub[:], np.stack([da[3], da[0]]))


def test_particle_stack_downsamples(io_write_stack):
    path, data = io_write_stack(n=3, box=16)
    stack = ParticleStack([path], np.zeros(3, int), np.arange(3), box=8)
    assert stack.box == 8 and stack.original_box == 16
    np.testing.assert_allclose(stack[[1]], fourier_crop(data[1:2], 8), atol=1e-6)


def test_nan_image_names_file_and_particle(io_write_stack):
    data = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
    data[2, 3, 3] = np.nan
    path, _ = io_write_stack("bad.mrcs", shape=(4, 8, 8))
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.set_data(data)
    stack = ParticleStack([path], np.zeros(4, int), np.arange(4), source=path.with_suffix(".star"))
    stack[[0, 1, 3]]
    with pytest.raises(ParticleFileError, match=r"bad\.mrcs: image 3 \(particle 3 of bad\.star\)"):
        stack[[0, 2]]


def test_row_past_end_and_mixed_box(io_write_stack):
    a, _ = io_write_stack("a.mrcs", n=4, box=16)
    b, _ = io_write_stack("b.mrcs", n=4, box=8)
    with pytest.raises(ParticleFileError, match=r"row 2 points to image 5 of a\.mrcs, which holds 4"):
        ParticleStack([a], np.zeros(2, int), np.array([0, 4]))
    with pytest.raises(ParticleFileError, match=r"mixed box sizes.*a\.mrcs.*b\.mrcs"):
        ParticleStack([a, b], np.array([0, 1]), np.array([0, 0]))
