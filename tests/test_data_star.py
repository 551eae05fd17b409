"""RELION STAR 3.0/3.1 reading: CTF, poses, several stacks, path resolution and every refusal."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.spatial.transform import Rotation

from napari_cryospin.data.errors import ParticleFileError
from napari_cryospin.data.particles import load_particles
from napari_cryospin.data.star import read_star

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ribosome70s"


def _particles(names, n, with_poses=True, version="3.1"):
    rng = np.random.default_rng(3)
    table = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnDefocusU": rng.uniform(1e4, 3e4, n),
            "rlnDefocusV": rng.uniform(1e4, 3e4, n),
            "rlnDefocusAngle": rng.uniform(-90, 90, n),
        }
    )
    if with_poses:
        table["rlnAngleRot"] = rng.uniform(-180, 180, n)
        table["rlnAngleTilt"] = rng.uniform(0, 180, n)
        table["rlnAnglePsi"] = rng.uniform(-180, 180, n)
        key = "Angst" if version == "3.1" else ""
        table[f"rlnOriginX{key}"] = rng.uniform(-5, 5, n)
        table[f"rlnOriginY{key}"] = rng.uniform(-5, 5, n)
    return table


def _write_31(path, table, pixel_size=2.0, box=16):
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [0.07],
            "rlnSphericalAberration": [2.7],
            "rlnVoltage": [300.0],
            "rlnImagePixelSize": [pixel_size],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    starfile.write({"optics": optics, "particles": table.assign(rlnOpticsGroup=1)}, path)


def _check_poses(ps, table, pixel_size, key):
    euler = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    expected = Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix()
    np.testing.assert_allclose(ps.rotations, expected, atol=1e-6)
    origin = table[[f"rlnOriginX{key}", f"rlnOriginY{key}"]].to_numpy()
    np.testing.assert_allclose(ps.shifts, origin / pixel_size, atol=1e-5)


def test_star_31_round_trip(io_write_stack, tmp_path):
    _, data = io_write_stack("stacks/parts.mrcs", n=6, box=16, pixel_size=1.0)
    names = [f"{i:06d}@stacks/parts.mrcs" for i in (6, 1, 3)]
    table = _particles(names, 3)
    _write_31(tmp_path / "p.star", table, pixel_size=2.5)
    ps = load_particles(tmp_path / "p.star")
    assert len(ps) == 3 and ps.box == 16 and ps.pixel_size == pytest.approx(2.5)
    np.testing.assert_array_equal(ps.stack[:], data[[5, 0, 2]])
    np.testing.assert_allclose(ps.ctf.defocus_u, table["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_allclose(ps.ctf.defocus_v, table["rlnDefocusV"], rtol=1e-6)
    np.testing.assert_allclose(ps.ctf.defocus_angle, table["rlnDefocusAngle"], atol=1e-5)
    np.testing.assert_allclose(ps.ctf.voltage, 300.0)
    np.testing.assert_allclose(ps.ctf.cs, 2.7)
    np.testing.assert_allclose(ps.ctf.amplitude_contrast, 0.07)
    np.testing.assert_allclose(ps.ctf.phase_shift, 0.0)
    np.testing.assert_allclose(ps.ctf.bfactor, 0.0)
    _check_poses(ps, table, 2.5, "Angst")
    assert ps.optics is not None and list(ps.table["rlnImageName"]) == names


def test_star_30_round_trip_with_defaults_and_pixel_columns(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=4, box=16, pixel_size=1.0)
    table = _particles([f"{i}@parts.mrcs" for i in (1, 2, 4)], 3, version="3.0")
    table = table.drop(columns=["rlnDefocusV", "rlnDefocusAngle"]).assign(
        rlnVoltage=200.0,
        rlnSphericalAberration=2.0,
        rlnAmplitudeContrast=0.1,
        rlnDetectorPixelSize=14.0,
        rlnMagnification=50000.0,
        rlnPhaseShift=12.0,
    )
    starfile.write(table, tmp_path / "old.star")
    ps = load_particles(tmp_path / "old.star")
    assert ps.optics is None and ps.pixel_size == pytest.approx(2.8)
    np.testing.assert_allclose(ps.ctf.defocus_v, ps.ctf.defocus_u)
    np.testing.assert_allclose(ps.ctf.defocus_angle, 0.0)
    np.testing.assert_allclose(ps.ctf.voltage, 200.0)
    np.testing.assert_allclose(ps.ctf.phase_shift, 12.0)
    _check_poses(ps, table, 1.0, "")


def test_pixel_size_from_header_and_downsampling(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=2, box=16, pixel_size=1.5)
    table = _particles(["1@parts.mrcs", "2@parts.mrcs"], 2, version="3.0").assign(
        rlnVoltage=300.0, rlnSphericalAberration=2.7, rlnAmplitudeContrast=0.1
    )
    starfile.write(table, tmp_path / "p.star")
    ps = read_star(tmp_path / "p.star", box=8)
    assert ps.box == 8 and ps.stack[:].shape == (2, 8, 8)
    assert ps.pixel_size == pytest.approx(3.0) and ps.original_pixel_size == pytest.approx(1.5)
    np.testing.assert_allclose(ps.shifts, table[["rlnOriginX", "rlnOriginY"]].to_numpy() / 2, atol=1e-5)


def test_several_stacks_and_absolute_and_project_relative_paths(io_write_stack, tmp_path):
    _, da = io_write_stack("Extract/a.mrcs", n=3, box=16, seed=1)
    pb, db = io_write_stack("elsewhere/b.mrcs", n=2, box=16, seed=2)
    names = ["2@Extract/a.mrcs", f"1@{pb}", "3@Extract/a.mrcs"]
    (tmp_path / "Refine").mkdir()
    _write_31(tmp_path / "Refine" / "run.star", _particles(names, 3, with_poses=False))
    ps = load_particles(tmp_path / "Refine" / "run.star")
    assert ps.rotations is None and ps.shifts is None
    assert len(ps.stack.files) == 2
    np.testing.assert_array_equal(ps.stack[:], np.stack([da[1], db[0], da[2]]))


def test_missing_stack_lists_what_was_tried(tmp_path):
    _write_31(tmp_path / "p.star", _particles(["1@gone.mrcs"], 1))
    with pytest.raises(ParticleFileError, match=r"p\.star: particle stack 'gone\.mrcs' not found; tried"):
        load_particles(tmp_path / "p.star")


def test_row_past_end_of_stack(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=3)
    _write_31(tmp_path / "p.star", _particles(["1@parts.mrcs", "4@parts.mrcs"], 2))
    with pytest.raises(ParticleFileError, match=r"p\.star: row 2 points to image 4 of parts\.mrcs"):
        load_particles(tmp_path / "p.star")


def test_mixed_box_sizes(io_write_stack, tmp_path):
    io_write_stack("a.mrcs", n=2, box=16)
    io_write_stack("b.mrcs", n=2, box=12)
    _write_31(tmp_path / "p.star", _particles(["1@a.mrcs", "1@b.mrcs"], 2))
    with pytest.raises(ParticleFileError, match=r"p\.star: mixed box sizes"):
        load_particles(tmp_path / "p.star")


def test_missing_defocus_u(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=2)
    _write_31(tmp_path / "p.star", _particles(["1@parts.mrcs"], 1).drop(columns=["rlnDefocusU"]))
    with pytest.raises(ParticleFileError, match=r"p\.star: missing column rlnDefocusU.*Fix"):
        load_particles(tmp_path / "p.star")


def test_missing_voltage_in_30(io_write_stack, tmp_path):
    io_write_stack("parts.mrcs", n=2)
    starfile.write(_particles(["1@parts.mrcs"], 1), tmp_path / "p.star")
    with pytest.raises(ParticleFileError, match=r"p\.star: missing column rlnVoltage"):
        load_particles(tmp_path / "p.star")


def test_empty_star(tmp_path):
    (tmp_path / "empty.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n")
    with pytest.raises(ParticleFileError, match=r"empty\.star"):
        load_particles(tmp_path / "empty.star")


def test_bad_image_name_and_missing_star(tmp_path):
    _write_31(tmp_path / "p.star", _particles(["parts.mrcs"], 1))
    with pytest.raises(ParticleFileError, match=r"p\.star: row 1: rlnImageName 'parts\.mrcs'"):
        load_particles(tmp_path / "p.star")
    with pytest.raises(ParticleFileError, match=r"nope\.star: STAR file not found"):
        load_particles(tmp_path / "nope.star")


@pytest.fixture
def io_ribosome():
    if not (SHARED / "particles.star").is_file():
        pytest.skip(f"shared dataset not found at {SHARED} (the folder beside the repository)")
    return SHARED


def test_shared_ribosome_particles(io_ribosome):
    ps = load_particles(io_ribosome / "particles.star")
    truth = np.load(io_ribosome / "truth" / "gt_poses.npy")
    assert len(ps) == 5000 and ps.box == 64
    assert ps.pixel_size == pytest.approx(5.078125)
    assert ps.rotations is None and ps.shifts is None
    np.testing.assert_allclose(ps.ctf.defocus_u, truth["defocus_A"], atol=1e-3)
    np.testing.assert_allclose(ps.ctf.voltage, 300.0)
    assert ps.stack[[0, 4999]].shape == (2, 64, 64)
    assert isinstance(ps.stack.stack(0).data, np.memmap)


def test_shared_ribosome_true_poses(io_ribosome):
    ps = load_particles(io_ribosome / "truth" / "particles_with_poses.star")
    truth = np.load(io_ribosome / "truth" / "gt_poses.npy")
    np.testing.assert_allclose(ps.rotations, truth["R"], atol=1e-5)
    np.testing.assert_allclose(ps.shifts, truth["shift_px"], atol=1e-5)


def test_stack_missing_beside_the_star_is_not_taken_from_a_parent_folder(io_write_stack, tmp_path):
    io_write_stack("particles.mrcs", n=2, box=16)  # another data set's stack, one folder up
    (tmp_path / "A").mkdir()
    _write_31(tmp_path / "A" / "p.star", _particles(["1@particles.mrcs"], 1))
    with pytest.raises(ParticleFileError) as err:
        load_particles(tmp_path / "A" / "p.star")
    message = str(err.value)
    assert message.startswith("p.star: particle stack 'particles.mrcs' not found; tried ")
    assert f"({tmp_path / 'particles.mrcs'} is not used: it may be another data set's). Fix:" in message


def test_project_relative_stack_found_in_a_parent_folder_is_named(io_write_stack, tmp_path, caplog):
    path, data = io_write_stack("Extract/job3/a.mrcs", n=2, box=16)
    (tmp_path / "Refine").mkdir()
    _write_31(tmp_path / "Refine" / "run.star", _particles(["2@Extract/job3/a.mrcs"], 1))
    ps = load_particles(tmp_path / "Refine" / "run.star")
    np.testing.assert_array_equal(ps.stack[:], data[[1]])
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "run.star: 1 stack not found where named" in record.getMessage()
    assert f"'Extract/job3/a.mrcs' → {path}" in record.getMessage()


def test_two_different_stacks_of_one_name_are_refused(io_write_stack, tmp_path, monkeypatch):
    io_write_stack("A/parts.mrcs", n=2, box=16, seed=1)
    io_write_stack("B/parts.mrcs", n=2, box=16, seed=2)
    _write_31(tmp_path / "A" / "p.star", _particles(["1@parts.mrcs"], 1))
    monkeypatch.chdir(tmp_path / "B")  # RELION reads names relative to the current (project) folder
    with pytest.raises(
        ParticleFileError, match=r"p\.star: 'parts\.mrcs' names two different files: .*A/parts"
    ):
        load_particles(tmp_path / "A" / "p.star")
    monkeypatch.chdir(tmp_path / "A")  # the same file both ways: no doubt
    assert len(load_particles(tmp_path / "A" / "p.star")) == 1


def test_a_header_pixel_size_contradicting_the_star_is_named_once(io_write_stack, tmp_path, caplog):
    io_write_stack("parts.mrcs", n=3, box=16, pixel_size=1.7)
    _write_31(tmp_path / "p.star", _particles([f"{i}@parts.mrcs" for i in (1, 2, 3)], 3), pixel_size=2.5)
    assert load_particles(tmp_path / "p.star").pixel_size == pytest.approx(2.5)
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert record.getMessage() == (
        "p.star: pixel size 2.5 Å in rlnImagePixelSize, but 1.7 Å in the header of parts.mrcs; using 2.5 Å, "
        "the STAR file's (as RELION does). If the header is right, correct rlnImagePixelSize in p.star."
    )
    caplog.clear()
    io_write_stack("agree.mrcs", n=3, box=16, pixel_size=2.5)
    _write_31(tmp_path / "q.star", _particles([f"{i}@agree.mrcs" for i in (1, 2, 3)], 3), pixel_size=2.5)
    load_particles(tmp_path / "q.star")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
