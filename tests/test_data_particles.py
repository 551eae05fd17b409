"""load_particles dispatch: bare stacks (no CTF) and unknown file types."""

import numpy as np
import pytest

from napari_cryospin.data.box_scale import rescale
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


def _star(path, names, **columns):
    import pandas as pd
    import starfile

    n = len(names)
    table = pd.DataFrame({"rlnImageName": names, "rlnDefocusU": 1e4 + np.arange(n), **columns})
    starfile.write(table.assign(rlnVoltage=300.0, rlnSphericalAberration=2.7, rlnAmplitudeContrast=0.1), path)
    return path


def test_repeated_images_are_used_once_with_one_warning(io_write_stack, tmp_path, caplog):
    _, data = io_write_stack("parts.mrcs", n=4, box=16)
    names = ["1@parts.mrcs", "2@parts.mrcs", "1@./parts.mrcs", "3@parts.mrcs", "2@parts.mrcs"]
    ps = load_particles(_star(tmp_path / "p.star", names))
    assert len(ps) == 3 and ps.repeats_dropped == 2
    assert list(ps.table["rlnImageName"]) == ["1@parts.mrcs", "2@parts.mrcs", "3@parts.mrcs"]
    np.testing.assert_array_equal(ps.ctf.defocus_u, [1e4, 1e4 + 1, 1e4 + 3])  # the first rows kept
    np.testing.assert_array_equal(ps.stack[:], data[:3])
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert record.getMessage() == (
        "p.star: 2 of 5 rows repeat an image listed earlier (e.g. row 3, 1@./parts.mrcs, as row 1); "
        "each image is used once (its first row): 3 particles, and a run's poses.star lists only those rows."
    )


def test_one_image_repeated_is_one_particle_and_refused(io_write_stack, tmp_path):
    from napari_cryospin.engine.inputs import check_enough_particles

    io_write_stack("parts.mrcs", n=2, box=16)
    ps = load_particles(_star(tmp_path / "p.star", ["1@parts.mrcs"] * 300))
    assert len(ps) == 1 and ps.repeats_dropped == 299
    with pytest.raises(ParticleFileError, match=r"1 particle \(299 rows repeated an image\), but a mean"):
        check_enough_particles(ps)


def test_reading_at_a_box_and_serving_at_it_later_rescale_alike(tmp_path):
    """STAR read at box 16 == read whole (24) then at_box(16): one rescale for pixel size and shifts."""
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.resources import bundled_map_path
    from napari_cryospin.simulation.simulate import simulate_to_dir

    volume, voxel = read_volume(bundled_map_path(32))
    simulate_to_dir(volume, voxel, 3, tmp_path / "d", box=24, snr=1.0, max_shift_px=3.0, seed=0)
    whole = load_particles(tmp_path / "d" / "truth.star")
    read_small, served_small = load_particles(tmp_path / "d" / "truth.star", box=16), whole.at_box(16)
    assert whole.box == 24 and np.abs(whole.shifts).max() > 1.0
    assert read_small.pixel_size == served_small.pixel_size == whole.pixel_size * 1.5
    np.testing.assert_array_equal(read_small.shifts, served_small.shifts)
    np.testing.assert_allclose(served_small.shifts, whole.shifts / 1.5, rtol=1e-15)
    assert served_small.original_pixel_size == whole.pixel_size


def test_rescale_keeps_the_field_of_view():
    pixel, shifts = rescale(1.0, np.array([[3.0, -1.5]]), 24, 16)
    assert pixel == 1.5 and shifts.tolist() == [[2.0, -1.0]]
    assert rescale(2.0, None, 16, 32) == (1.0, None)
