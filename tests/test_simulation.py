"""Simulation, atomic-model rendering, the bundled map and ``cryospin simulate`` (fast, CPU)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from napari_cryospin.cli import simulate as simulate_cli
from napari_cryospin.geometry.rotations import euler_to_matrix
from napari_cryospin.physics.ctf import ctf_2d
from napari_cryospin.physics.fourier import fftn_centered, frequency_grid_2d, ifftn_centered
from napari_cryospin.physics.shifts import centering_phase
from napari_cryospin.physics.slicing import extract_slices
from napari_cryospin.resources import bundled_map_path
from napari_cryospin.simulation import atomic
from napari_cryospin.simulation.simulate import resize_volume, simulate, simulate_to_dir, write_simulation

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")


@pytest.fixture(scope="module")
def small_map() -> tuple[np.ndarray, float]:
    """The bundled 32-box map and its voxel size."""
    with mrcfile.open(bundled_map_path(32)) as mrc:
        return mrc.data.astype(np.float32), float(mrc.voxel_size.x)


def _rotate_180(volume: np.ndarray, axis: int) -> np.ndarray:
    """Exact 180° rotation about a grid axis through index L//2 (index i ↦ L − i on the other two axes)."""
    other = tuple(a for a in range(3) if a != axis)
    return np.roll(np.flip(volume, axis=other), 1, axis=other)


def test_bundled_map_is_a_real_asymmetric_density():
    for box, max_bytes in ((64, 1_100_000), (32, 200_000)):
        path = bundled_map_path(box)
        assert path.is_file() and path.stat().st_size < max_bytes
        with mrcfile.open(path) as mrc:
            volume = mrc.data.astype(np.float64)
            voxel = float(mrc.voxel_size.x)
        assert volume.shape == (box,) * 3
        assert voxel == pytest.approx(3.31 * 64 / box, rel=1e-4)
        assert volume.sum() > 0 and volume.max() > 5 * abs(volume.min())
        assert volume[volume > 0].sum() > 0.9 * np.abs(volume).sum()
        for axis in range(3):
            corr = np.corrcoef(volume.ravel(), _rotate_180(volume, axis).ravel())[0, 1]
            assert corr < 0.9, (box, axis, corr)
    provenance = (bundled_map_path(64).parent / "provenance.json").read_text()
    assert '"pdb_id": "7DDO"' in provenance


def test_noise_matches_snr_definition(small_map):
    volume, voxel = small_map
    noisy = simulate(volume, voxel, 400, snr=0.1, seed=3)
    clean = simulate(volume, voxel, 400, snr=None, seed=3)
    signal_var = clean.images.astype(np.float64).var(axis=(1, 2)).mean()
    noise_var = (noisy.images.astype(np.float64) - clean.images).var()
    assert noisy.signal_var == pytest.approx(signal_var, rel=1e-4)
    assert signal_var / noise_var == pytest.approx(0.1, rel=0.05)
    assert clean.noise_sigma == 0.0 and clean.snr is None


def test_noise_free_images_are_the_forward_model(small_map):
    volume, voxel = small_map
    result = simulate(volume, voxel, 16, snr=None, oversampling=False, astigmatism=2000.0, seed=5)
    box = volume.shape[0]
    spectrum = fftn_centered(torch.as_tensor(volume).to(torch.complex64), 3)
    k = frequency_grid_2d(box).reshape(-1, 2)
    rot = torch.as_tensor(result.rotations, dtype=torch.float32)
    shifts = torch.as_tensor(result.shifts_px, dtype=torch.float32)
    n = len(result)

    def full(x):
        return torch.full((n,), x, dtype=torch.float32)

    def t(x):
        return torch.as_tensor(x, dtype=torch.float32)

    h = ctf_2d(
        k / (box * voxel),
        t(result.defocus_u),
        t(result.defocus_v),
        t(result.defocus_angle),
        full(300.0),
        full(2.7),
        full(0.1),
    )
    spec = h * extract_slices(spectrum, rot, k) * centering_phase(k / box, shifts).conj()
    expected = ifftn_centered(spec.reshape(n, box, box), 2).real.numpy()
    assert np.abs(result.images - expected).max() < 1e-4 * np.abs(expected).max()
    assert np.all(result.defocus_u - result.defocus_v == pytest.approx(2000.0))
    over = simulate(volume, voxel, 16, snr=None, astigmatism=2000.0, seed=5)
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(over.images, expected, strict=True)]
    assert min(corr) > 0.95


def test_parameters_in_range_and_rotations_uniform(small_map):
    volume, voxel = small_map
    result = simulate(volume, voxel, 2000, snr=None, max_shift_px=2.0, defocus=(8000, 12000), batch_size=700)
    assert np.abs(result.shifts_px).max() <= 2.0
    assert result.defocus_u.min() >= 8000 and result.defocus_u.max() <= 12000
    np.testing.assert_allclose(
        result.rotations @ result.rotations.transpose(0, 2, 1),
        np.broadcast_to(np.eye(3), (2000, 3, 3)),
        atol=1e-6,
    )
    views = result.rotations[:, :, 2]
    assert np.abs(views.mean(axis=0)).max() < 0.06


def test_determinism_under_seed(small_map):
    volume, voxel = small_map
    a = simulate(volume, voxel, 20, seed=11, batch_size=7)
    b = simulate(volume, voxel, 20, seed=11, batch_size=20)
    c = simulate(volume, voxel, 20, seed=12)
    np.testing.assert_allclose(a.images, b.images, atol=1e-5 * np.abs(a.images).max())
    np.testing.assert_array_equal(a.rotations, b.rotations)
    assert not np.allclose(a.rotations, c.rotations)


def test_written_files(small_map, tmp_path: Path):
    volume, voxel = small_map
    result = simulate(volume, voxel, 30, box=24, seed=2)
    assert result.pixel_size == pytest.approx(voxel * 32 / 24)
    write_simulation(result, tmp_path)

    with mrcfile.open(tmp_path / "particles.mrcs") as mrc:
        assert mrc.data.dtype == np.float32 and mrc.data.shape == (30, 24, 24)
        assert float(mrc.voxel_size.x) == pytest.approx(result.pixel_size, rel=1e-5)
        np.testing.assert_array_equal(mrc.data, result.images)
    with mrcfile.open(tmp_path / "truth_volume.mrc") as mrc:
        assert mrc.data.shape == (24,) * 3
        assert float(mrc.voxel_size.x) == pytest.approx(result.pixel_size, rel=1e-5)

    user = starfile.read(tmp_path / "particles.star")
    assert not set(POSE_COLUMNS) & set(user["particles"].columns)
    optics = user["optics"].iloc[0]
    assert optics["rlnImagePixelSize"] == pytest.approx(result.pixel_size)
    assert (optics["rlnImageSize"], optics["rlnVoltage"], optics["rlnSphericalAberration"]) == (24, 300, 2.7)
    assert optics["rlnAmplitudeContrast"] == pytest.approx(0.1)
    assert user["particles"]["rlnImageName"].iloc[4] == "000005@particles.mrcs"
    np.testing.assert_allclose(user["particles"]["rlnDefocusU"], result.defocus_u, rtol=1e-6)

    truth = starfile.read(tmp_path / "truth.star")["particles"]
    angles = torch.as_tensor(truth[list(POSE_COLUMNS[:3])].to_numpy(), dtype=torch.float64)
    rot = euler_to_matrix(*angles.unbind(-1)).numpy()
    np.testing.assert_allclose(rot, result.rotations, atol=1e-4)
    origins = truth[list(POSE_COLUMNS[3:])].to_numpy() / result.pixel_size
    np.testing.assert_allclose(origins, result.shifts_px, atol=1e-4)


def test_simulate_to_dir_matches_in_memory(small_map, tmp_path: Path):
    volume, voxel = small_map
    result = simulate_to_dir(volume, voxel, 25, tmp_path, seed=4, batch_size=8)
    reference = simulate(volume, voxel, 25, seed=4, batch_size=8)
    with mrcfile.open(tmp_path / "particles.mrcs") as mrc:
        np.testing.assert_array_equal(mrc.data, reference.images)
    np.testing.assert_array_equal(result.rotations, reference.rotations)
    assert (tmp_path / "truth.star").is_file()


def test_resize_volume_keeps_values_and_low_frequencies(small_map):
    volume, _ = small_map
    small = resize_volume(volume, 16)
    assert small.shape == (16,) * 3
    assert small.mean() == pytest.approx(volume.mean(), rel=1e-4)
    back = resize_volume(small, 32)
    assert back.mean() == pytest.approx(volume.mean(), rel=1e-4)
    assert np.corrcoef(back.ravel(), volume.ravel())[0, 1] > 0.8


def test_bad_inputs(small_map):
    volume, voxel = small_map
    with pytest.raises(ValueError, match="cube"):
        simulate(volume[:, :, :30], voxel, 5)
    with pytest.raises(ValueError, match="snr"):
        simulate(volume, voxel, 5, snr=0)
    with pytest.raises(ValueError, match="box must be even"):
        simulate(volume, voxel, 5, box=31)


_ATOMS = (  # (record, name, residue, x, y, z, occupancy, element)
    ("ATOM", " N  ", "ALA", 10.0, 0.0, 0.0, 1.0, "N"),
    ("ATOM", " CA ", "ALA", 0.0, 12.0, 0.0, 1.0, "C"),
    ("ATOM", " C  ", "ALA", 0.0, 0.0, 8.0, 0.5, "C"),
    ("HETATM", "ZN  ", " ZN", -4.0, -4.0, -4.0, 1.0, "ZN"),
    ("HETATM", " O  ", "HOH", 3.0, 3.0, 3.0, 1.0, "O"),
)
_PDB = "".join(
    f"{rec:<6}{i + 1:>5} {name} {res} A{i + 1:>4}    {x:8.3f}{y:8.3f}{z:8.3f}{occ:6.2f}{10:6.2f}{el:>12}\n"
    for i, (rec, name, res, x, y, z, occ, el) in enumerate(_ATOMS)
)

_CIF_ITEMS = ["group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id",
              "label_asym_id", "label_seq_id", "pdbx_PDB_ins_code", "Cartn_x", "Cartn_y", "Cartn_z",
              "occupancy", "B_iso_or_equiv", "auth_seq_id", "auth_comp_id", "auth_asym_id", "auth_atom_id",
              "pdbx_PDB_model_num"]  # fmt: skip
_CIF = (
    "data_test\nloop_\n"
    + "".join(f"_atom_site.{item}\n" for item in _CIF_ITEMS)
    + "".join(
        f"{rec} {i + 1} {el} {name.strip()} . {res.strip()} A {i + 1} ? {x} {y} {z} {occ} 10.0 "
        f"{i + 1} {res.strip()} A {name.strip()} 1\n"
        for i, (rec, name, res, x, y, z, occ, el) in enumerate(_ATOMS)
    )
    + "ATOM 6 C CA . ALA A 6 ? 50.0 50.0 50.0 1.0 10.0 6 ALA A CA 2\n#\n"
)


@pytest.mark.parametrize("use_gemmi", [False, True])
def test_atomic_readers_agree(tmp_path: Path, use_gemmi: bool):
    (tmp_path / "m.pdb").write_text(_PDB)
    (tmp_path / "m.cif").write_text(_CIF)
    for name in ("m.pdb", "m.cif"):
        atoms = atomic.read_atoms(tmp_path / name, use_gemmi=use_gemmi)
        np.testing.assert_allclose(atoms.atomic_number, [7, 6, 6, 30])
        np.testing.assert_allclose(atoms.weights, [7, 6, 3, 30])
        np.testing.assert_allclose(atoms.xyz[1], [0, 12, 0])


def test_atoms_to_map_centre_and_mass(tmp_path: Path):
    (tmp_path / "m.pdb").write_text(_PDB)
    atoms = atomic.read_atoms(tmp_path / "m.pdb", use_gemmi=False)
    volume, voxel = atomic.model_to_map(tmp_path / "m.pdb", 32)
    assert volume.dtype == np.float32 and volume.shape == (32,) * 3
    assert voxel == pytest.approx(atomic.auto_voxel_size(atoms, 32))
    assert volume.sum() == pytest.approx(atoms.weights.sum(), rel=1e-4)
    grid = np.arange(32) - 16
    centroid = [(volume.sum(axis=axes) * grid).sum() / volume.sum() for axes in ((0, 1), (0, 2), (1, 2))]
    np.testing.assert_allclose(centroid, 0.0, atol=0.05)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match=r"m\.txt: not a PDB or mmCIF"):
        atomic.read_atoms(tmp_path / "m.txt")


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulate_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_end_to_end(tmp_path: Path, capsys):
    out = tmp_path / "sim"
    args = _cli(["simulate", "bundled", "--n", "50", "--box", "32", "--snr", "0.1", "--seed", "1",
                 "--defocus", "12000", "20000", "--max-shift", "2", "--out", str(out)])  # fmt: skip
    assert args.run(args) == 0
    assert "simulated 50 particles" in capsys.readouterr().out
    with mrcfile.open(out / "particles.mrcs") as mrc:
        assert mrc.data.shape == (50, 32, 32)
        assert float(mrc.voxel_size.x) == pytest.approx(6.62, rel=1e-5)
    truth = starfile.read(out / "truth.star")["particles"]
    assert truth["rlnDefocusU"].between(12000, 20000).all()
    assert (truth[["rlnOriginXAngst", "rlnOriginYAngst"]].abs() <= 2 * 6.62 + 1e-6).all().all()
    assert not set(POSE_COLUMNS) & set(starfile.read(out / "particles.star")["particles"].columns)
    with pytest.raises(ValueError, match="--overwrite"):
        args.run(args)


def test_cli_rejects_bad_files(tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt.*Fix"):
        simulate_cli.load_map(str(text), None, None)
    flat = tmp_path / "flat.mrc"
    with mrcfile.new(flat) as mrc:
        mrc.set_data(np.zeros((8, 16, 16), dtype=np.float32))
        mrc.voxel_size = 2.0
    with pytest.raises(ValueError, match=r"flat\.mrc.*not a cube"):
        simulate_cli.load_map(str(flat), None, None)
    with pytest.raises(FileNotFoundError, match=r"missing\.mrc"):
        simulate_cli.load_map(str(tmp_path / "missing.mrc"), None, None)


def test_cryospin_main_reports_bad_map(tmp_path: Path, capsys):
    if importlib.util.find_spec("napari_cryospin.cli.demo") is None:
        pytest.skip("not every cryospin sub-command is written yet")
    from napari_cryospin.cli import main

    bad = tmp_path / "map.txt"
    bad.write_text("x")
    assert main(["simulate", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "map.txt" in capsys.readouterr().err
    assert main(["simulate", "bundled", "--n", "4", "--box", "16", "--out", str(tmp_path / "o")]) == 0
