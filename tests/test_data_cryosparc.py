"""cryoSPARC .cs reading: blob paths ('>' prefix), CTF units, poses, and refusals."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_cryospin.data.errors import ParticleFileError
from napari_cryospin.data.particles import load_particles

FIELDS = [
    ("uid", "<u8"),
    ("blob/path", "S64"),
    ("blob/idx", "<u4"),
    ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"),
    ("ctf/accel_kv", "<f4"),
    ("ctf/cs_mm", "<f4"),
    ("ctf/amp_contrast", "<f4"),
    ("ctf/df1_A", "<f4"),
    ("ctf/df2_A", "<f4"),
    ("ctf/df_angle_rad", "<f4"),
    ("ctf/phase_shift_rad", "<f4"),
    ("alignments3D/pose", "<f4", (3,)),
    ("alignments3D/shift", "<f4", (2,)),
]


def _cs(path, blob_paths, idx, fields=FIELDS):
    n = len(idx)
    rng = np.random.default_rng(5)
    data = np.zeros(n, dtype=fields)
    data["blob/path"] = blob_paths
    data["blob/idx"] = idx
    names = data.dtype.names
    for name, values in {
        "blob/psize_A": 1.25,
        "blob/shape": 16,
        "ctf/accel_kv": 300,
        "ctf/cs_mm": 2.7,
        "ctf/amp_contrast": 0.1,
        "ctf/df1_A": rng.uniform(1e4, 2e4, n),
        "ctf/df2_A": rng.uniform(1e4, 2e4, n),
        "ctf/df_angle_rad": rng.uniform(-1, 1, n),
        "ctf/phase_shift_rad": np.pi / 2,
        "alignments3D/pose": rng.normal(size=(n, 3)),
        "alignments3D/shift": rng.uniform(-3, 3, (n, 2)),
    }.items():
        if name in names:
            data[name] = values
    with open(path, "wb") as fh:
        np.save(fh, data)
    return data


def test_cs_round_trip(io_write_stack, tmp_path):
    _, stack_data = io_write_stack("J3/extract/parts.mrcs", n=5, box=16)
    data = _cs(tmp_path / "J3" / "particles.cs", [b">J3/extract/parts.mrcs"] * 3, [4, 0, 2])
    ps = load_particles(tmp_path / "J3" / "particles.cs")
    assert len(ps) == 3 and ps.pixel_size == pytest.approx(1.25) and ps.table is None
    np.testing.assert_array_equal(ps.stack[:], stack_data[[4, 0, 2]])
    np.testing.assert_allclose(ps.ctf.defocus_u, data["ctf/df1_A"])
    np.testing.assert_allclose(ps.ctf.defocus_v, data["ctf/df2_A"])
    np.testing.assert_allclose(ps.ctf.defocus_angle, np.rad2deg(data["ctf/df_angle_rad"]), rtol=1e-6)
    np.testing.assert_allclose(ps.ctf.phase_shift, 90.0, rtol=1e-6)
    np.testing.assert_allclose(ps.ctf.bfactor, 0.0)
    expected = Rotation.from_rotvec(data["alignments3D/pose"].astype(float)).as_matrix()
    np.testing.assert_allclose(ps.rotations, expected, atol=1e-6)
    np.testing.assert_allclose(ps.shifts, data["alignments3D/shift"])


def test_cs_basename_beside_file_and_downsampled_shifts(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=2, box=16)
    data = _cs(tmp_path / "p.cs", [b"/far/away/parts.mrcs"] * 2, [0, 1])
    ps = load_particles(tmp_path / "p.cs", box=8)
    assert ps.pixel_size == pytest.approx(2.5)
    np.testing.assert_allclose(ps.shifts, data["alignments3D/shift"] / 2)


def test_cs_without_alignments_or_ctf(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=2, box=16)
    no_pose = [f for f in FIELDS if not f[0].startswith("alignments3D")]
    _cs(tmp_path / "a.cs", [b"parts.mrcs"] * 2, [0, 1], fields=no_pose)
    assert load_particles(tmp_path / "a.cs").rotations is None
    no_ctf = [f for f in no_pose if f[0] != "ctf/df1_A"]
    _cs(tmp_path / "b.cs", [b"parts.mrcs"] * 2, [0, 1], fields=no_ctf)
    with pytest.raises(ParticleFileError, match=r"b\.cs: missing field ctf/df1_A"):
        load_particles(tmp_path / "b.cs")


def test_cs_refusals(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=2, box=16)
    _cs(tmp_path / "past.cs", [b"parts.mrcs"] * 2, [0, 2])
    with pytest.raises(ParticleFileError, match=r"past\.cs: row 2 points to image 3 of parts\.mrcs"):
        load_particles(tmp_path / "past.cs")
    (tmp_path / "junk.cs").write_bytes(b"not numpy")
    with pytest.raises(ParticleFileError, match=r"junk\.cs: not a cryoSPARC \.cs file"):
        load_particles(tmp_path / "junk.cs")


@pytest.mark.parametrize(
    ("field", "row", "value"),
    [
        ("ctf/df1_A", 1, -100.0),
        ("ctf/df2_A", 0, 0.0),
        ("ctf/df1_A", 2, np.inf),
        ("ctf/accel_kv", 0, 0.0),
        ("ctf/amp_contrast", 1, 1.2),
        ("ctf/cs_mm", 2, -2.7),
        ("ctf/phase_shift_rad", 1, np.nan),
        ("blob/psize_A", 0, 0.0),
    ],
)
def test_cs_invalid_values_name_file_row_and_field(io_write_stack, tmp_path, field, row, value):
    io_write_stack("parts.mrcs", n=3, box=16)
    data = _cs(tmp_path / "p.cs", [b"parts.mrcs"] * 3, [0, 1, 2])
    data[field][row] = value
    with open(tmp_path / "p.cs", "wb") as fh:
        np.save(fh, data)
    with pytest.raises(ParticleFileError, match=rf"p\.cs: row {row + 1}, column {field}: .*Fix:") as err:
        load_particles(tmp_path / "p.cs")
    assert "\n" not in str(err.value)


def test_cs_different_pixel_sizes_are_refused(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=3, box=16)
    data = _cs(tmp_path / "p.cs", [b"parts.mrcs"] * 3, [0, 1, 2])
    data["blob/psize_A"][2] = 1.6
    with open(tmp_path / "p.cs", "wb") as fh:
        np.save(fh, data)
    with pytest.raises(ParticleFileError, match=r"different pixel sizes: 1\.25 and 1\.6 Å .* rows 1 and 3"):
        load_particles(tmp_path / "p.cs")


def test_repeated_blobs_are_used_once(io_write_stack, tmp_path):
    _, stack_data = io_write_stack("J3/extract/parts.mrcs", n=5, box=16)
    blobs = [b">J3/extract/parts.mrcs", b"J3/extract/parts.mrcs", b"J3/extract/parts.mrcs"]
    data = _cs(tmp_path / "J3" / "particles.cs", blobs, [4, 4, 2])
    ps = load_particles(tmp_path / "J3" / "particles.cs")
    assert len(ps) == 2 and ps.repeats_dropped == 1
    np.testing.assert_array_equal(ps.stack[:], stack_data[[4, 2]])
    np.testing.assert_allclose(ps.ctf.defocus_u, data["ctf/df1_A"][[0, 2]])
