"""MRC volumes and memory-mapped stacks: round trips, indexing and every refusal names the file."""

import mrcfile
import numpy as np
import pytest

from napari_cryospin.data.errors import ParticleFileError
from napari_cryospin.data.mrc import open_stack, read_volume, write_volume


def test_volume_round_trip_keeps_values_and_voxel_size(tmp_path):
    volume = np.random.default_rng(1).normal(size=(8, 10, 12))
    path = tmp_path / "map.mrc"
    write_volume(path, volume, 1.75)
    back, voxel = read_volume(path)
    assert back.dtype == np.float32 and back.shape == (8, 10, 12)
    np.testing.assert_allclose(back, volume.astype(np.float32))
    assert voxel == pytest.approx(1.75)
    assert [p.name for p in tmp_path.iterdir()] == ["map.mrc"]


def test_stack_is_memory_mapped_and_indexes_like_numpy(io_write_stack):
    path, data = io_write_stack(n=6, box=8, pixel_size=3.5)
    stack = open_stack(path)
    assert isinstance(stack.data, np.memmap)
    assert len(stack) == 6 and stack.shape == (6, 8, 8) and stack.box == 8
    assert stack.pixel_size == pytest.approx(3.5)
    np.testing.assert_array_equal(stack[2], data[2:3])
    np.testing.assert_array_equal(stack[1:4], data[1:4])
    np.testing.assert_array_equal(stack[np.array([5, 0, 5])], data[[5, 0, 5]])
    out = stack[[0]]
    assert out.dtype == np.float32 and not isinstance(out, np.memmap)
    out[:] = 0
    np.testing.assert_array_equal(stack[0], data[0:1])


def test_stack_reads_without_mapping_pages_in_any_order_and_file_dtype(tmp_path):
    """Images are read from the file (os.pread), not through the map: the RSS stays flat over an epoch."""
    data = np.random.default_rng(2).integers(-300, 300, size=(9, 6, 6)).astype(">i2")
    path = tmp_path / "int16.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data.astype(np.int16))
    stack = open_stack(path)
    assert stack._fd is not None
    pick = np.array([8, 3, 4, 4, 0, -1, 7])
    np.testing.assert_array_equal(stack[pick], data[pick].astype(np.float32))
    np.testing.assert_array_equal(stack[1:9:3], data[1:9:3].astype(np.float32))
    assert stack[pick].dtype == np.float32


def test_single_image_is_a_stack_of_one_and_unset_pixel_size_is_none(io_write_stack):
    path, data = io_write_stack(name="one.mrc", shape=(8, 8), pixel_size=1.0)
    stack = open_stack(path)
    assert len(stack) == 1 and stack.pixel_size is None
    np.testing.assert_array_equal(stack[0][0], data)


def test_missing_file(tmp_path):
    with pytest.raises(ParticleFileError, match=r"nothere\.mrcs.*not found"):
        open_stack(tmp_path / "nothere.mrcs")


def test_truncated_stack_is_explained(io_write_stack):
    path, _ = io_write_stack(name="cut.mrcs", n=5, box=16)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(ParticleFileError, match=r"cut\.mrcs: truncated.*Fix"):
        open_stack(path)


def test_not_an_mrc(tmp_path):
    path = tmp_path / "notes.mrcs"
    path.write_bytes(b"this is text, not a map\n" * 100)
    with pytest.raises(ParticleFileError, match=r"notes\.mrcs: not an MRC file"):
        open_stack(path)


def test_non_square_images(io_write_stack):
    path, _ = io_write_stack(name="rect.mrcs", shape=(3, 8, 10))
    with pytest.raises(ParticleFileError, match=r"rect\.mrcs: images are 10x8.*not square"):
        open_stack(path)


def test_empty_stack(tmp_path):
    path = tmp_path / "empty.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((0, 8, 8), np.float32))
    with pytest.raises(ParticleFileError, match=r"empty\.mrcs: the stack is empty"):
        open_stack(path)
