"""Writing poses to RELION 3.1 STAR and reading them back (also from 3.0, .cs and downsampled input)."""

import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.spatial.transform import Rotation

from napari_cryospin.data.particles import load_particles
from napari_cryospin.data.poses_out import write_poses_star


def _poses(n, seed=0):
    rng = np.random.default_rng(seed)
    return Rotation.random(n, random_state=seed).as_matrix(), rng.uniform(-4, 4, (n, 2))


def _star_30(tmp_path, n=4):
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{i}@parts.mrcs" for i in range(n, 0, -1)],
            "rlnDefocusU": np.linspace(1e4, 2e4, n),
            "rlnVoltage": 300.0,
            "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.1,
            "rlnPixelSize": 1.5,
            "rlnMicrographName": [f"mic{i}.mrc" for i in range(n)],
            "rlnOriginX": 1.0,
            "rlnOriginY": 2.0,
        }
    )
    starfile.write(table, tmp_path / "in.star")
    return table


def test_write_from_30_reads_back_into_another_folder(io_write_stack, tmp_path):
    _, data = io_write_stack("parts.mrcs", n=4, box=16)
    table = _star_30(tmp_path)
    ps = load_particles(tmp_path / "in.star")
    rotations, shifts = _poses(4)
    out = tmp_path / "out" / "poses.star"
    out.parent.mkdir()
    write_poses_star(out, ps, rotations, shifts, extra_columns={"rlnMaxValueProbDistribution": np.ones(4)})
    back = load_particles(out)
    np.testing.assert_allclose(back.rotations, rotations, atol=1e-6)
    np.testing.assert_allclose(back.shifts, shifts, atol=1e-5)
    np.testing.assert_array_equal(back.stack[:], data[::-1])
    np.testing.assert_allclose(back.ctf.defocus_u, table["rlnDefocusU"])
    assert back.pixel_size == pytest.approx(1.5)
    assert list(back.table["rlnMicrographName"]) == list(table["rlnMicrographName"])
    assert "rlnOriginX" not in back.table.columns
    assert back.table["rlnImageName"][0] == "000004@../parts.mrcs"
    np.testing.assert_allclose(back.table["rlnMaxValueProbDistribution"], 1.0)
    assert back.optics is not None and back.optics["rlnImageSize"][0] == 16
    assert [p.name for p in out.parent.iterdir()] == ["poses.star"]


def test_downsampled_shifts_are_written_in_angstrom(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=4, box=16)
    _star_30(tmp_path)
    small = load_particles(tmp_path / "in.star", box=8)
    rotations, shifts = _poses(4, seed=1)
    write_poses_star(tmp_path / "p.star", small, rotations, shifts)
    written = starfile.read(tmp_path / "p.star")["particles"]
    np.testing.assert_allclose(written["rlnOriginXAngst"], shifts[:, 0] * 3.0, atol=1e-5)
    full = load_particles(tmp_path / "p.star")
    assert full.box == 16 and full.pixel_size == pytest.approx(1.5)
    np.testing.assert_allclose(full.shifts, shifts * 2, atol=1e-5)


def test_write_from_31_keeps_optics_and_from_subset(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=4, box=16)
    _star_30(tmp_path)
    rotations, shifts = _poses(4, seed=2)
    write_poses_star(tmp_path / "a.star", load_particles(tmp_path / "in.star"), rotations, shifts)
    first = load_particles(tmp_path / "a.star")
    sub = first.subset([3, 1])
    write_poses_star(tmp_path / "b.star", sub, sub.rotations, sub.shifts)
    back = load_particles(tmp_path / "b.star")
    np.testing.assert_allclose(back.rotations, rotations[[3, 1]], atol=1e-6)
    np.testing.assert_array_equal(back.stack[:], first.stack[[3, 1]])
    pd.testing.assert_frame_equal(back.optics, first.optics)


def test_shape_mismatch_is_refused(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=4, box=16)
    _star_30(tmp_path)
    ps = load_particles(tmp_path / "in.star")
    with pytest.raises(ValueError, match="expected rotations"):
        write_poses_star(tmp_path / "x.star", ps, np.zeros((3, 3, 3)), np.zeros((4, 2)))
