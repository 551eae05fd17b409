"""CTF, optics and pose values are checked when files are read: one line naming file, row and column.

Also: optics groups are honoured per particle, and different pixel sizes across groups are refused.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from napari_cryospin.cli import main
from napari_cryospin.data.errors import ParticleFileError
from napari_cryospin.data.particles import load_particles
from napari_cryospin.physics.ctf import ctf_2d

N = 4


def _optics(**overrides) -> pd.DataFrame:
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnSphericalAberration": [2.7, 0.01],
            "rlnVoltage": [300.0, 200.0],
            "rlnImagePixelSize": [2.0, 2.0],
            "rlnImageSize": [16, 16],
            "rlnImageDimensionality": [2, 2],
        }
    )
    for column, (row, value) in overrides.items():
        optics.loc[row, column] = value
    return optics


def _particles(**overrides) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1}@parts.mrcs" for i in range(N)],
            "rlnOpticsGroup": [1, 2, 1, 2],
            "rlnDefocusU": rng.uniform(1e4, 2e4, N),
            "rlnDefocusV": rng.uniform(1e4, 2e4, N),
            "rlnDefocusAngle": rng.uniform(0, 180, N),
            "rlnPhaseShift": np.zeros(N),
            "rlnCtfBfactor": np.zeros(N),
            "rlnAngleRot": rng.uniform(-180, 180, N),
            "rlnAngleTilt": rng.uniform(0, 180, N),
            "rlnAnglePsi": rng.uniform(-180, 180, N),
            "rlnOriginXAngst": rng.uniform(-2, 2, N),
            "rlnOriginYAngst": rng.uniform(-2, 2, N),
        }
    )
    for column, (row, value) in overrides.items():
        table.loc[row, column] = value
    return table


@pytest.fixture
def write_star(io_write_stack, tmp_path):
    """Factory: a 4-particle, two-optics-group STAR file beside parts.mrcs, with values overridden."""
    io_write_stack("parts.mrcs", n=N, box=16, pixel_size=2.0)

    def write(particles: dict | None = None, optics: dict | None = None) -> Path:
        path = tmp_path / "p.star"
        starfile.write(
            {"optics": _optics(**(optics or {})), "particles": _particles(**(particles or {}))},
            path,
            overwrite=True,
        )
        return path

    return write


# (table, column, row (0-based), value): every invalid value the readers must refuse
INVALID = [
    ("particles", "rlnDefocusU", 2, -5000.0),
    ("particles", "rlnDefocusU", 1, 0.0),
    ("particles", "rlnDefocusV", 3, np.inf),
    ("particles", "rlnDefocusU", 0, np.nan),
    ("particles", "rlnDefocusAngle", 1, -np.inf),
    ("particles", "rlnPhaseShift", 2, np.inf),
    ("particles", "rlnCtfBfactor", 3, np.nan),
    ("particles", "rlnAngleTilt", 1, np.inf),
    ("particles", "rlnOriginXAngst", 2, np.nan),
    ("optics", "rlnVoltage", 1, 0.0),
    ("optics", "rlnAmplitudeContrast", 0, 1.2),
    ("optics", "rlnAmplitudeContrast", 1, -0.1),
    ("optics", "rlnSphericalAberration", 1, -1.0),
    ("optics", "rlnSphericalAberration", 0, np.inf),
    ("optics", "rlnImagePixelSize", 0, 0.0),
]
IDS = [f"{t}-{c}-{v}" for t, c, _, v in INVALID]


def _expect_one_line(message: str, table: str, column: str, row: int) -> None:
    assert "\n" not in message.strip()
    assert "p.star" in message and column in message and "Fix:" in message
    prefix = "data_optics row" if table == "optics" else "row"
    assert f"{prefix} {row + 1}," in message


@pytest.mark.parametrize(("table", "column", "row", "value"), INVALID, ids=IDS)
def test_invalid_star_value_is_one_line_naming_file_row_column(write_star, table, column, row, value):
    path = write_star(**{table: {column: (row, value)}})
    with pytest.raises(ParticleFileError) as err:
        load_particles(path)
    _expect_one_line(str(err.value), table, column, row)


@pytest.mark.parametrize("command", ["reconstruct", "backproject"])
@pytest.mark.parametrize(("table", "column", "row", "value"), INVALID, ids=IDS)
def test_cli_ends_with_one_line_and_nonzero_exit(
    write_star, tmp_path, capsys, command, table, column, row, value
):
    path = write_star(**{table: {column: (row, value)}})
    code = main([command, str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith(f"cryospin {command}: error: ")
    _expect_one_line(err, table, column, row)


def test_valid_file_reads_and_backprojects(write_star, tmp_path, capsys):
    path = write_star()
    assert main(["backproject", str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "volume.mrc").exists()


def test_optics_groups_are_honoured_per_particle(write_star):
    ps = load_particles(write_star(particles={"rlnCtfBfactor": (1, 50.0), "rlnPhaseShift": (3, 90.0)}))
    group = np.array([1, 2, 1, 2])
    np.testing.assert_allclose(ps.ctf.voltage, np.where(group == 1, 300.0, 200.0))
    np.testing.assert_allclose(ps.ctf.cs, np.where(group == 1, 2.7, 0.01))
    np.testing.assert_allclose(ps.ctf.amplitude_contrast, np.where(group == 1, 0.1, 0.07))
    np.testing.assert_allclose(ps.ctf.bfactor, [0, 50, 0, 0])
    np.testing.assert_allclose(ps.ctf.phase_shift, [0, 0, 0, 90])
    # The CTF of each particle is that of its own group's optics (and its own B-factor, phase shift).
    freqs = torch.tensor([[0.0, 0.0], [0.05, 0.02], [0.1, -0.08], [0.2, 0.1]])
    columns = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast")
    values = {c: torch.tensor(getattr(ps.ctf, c), dtype=torch.float32) for c in columns}
    phase = torch.tensor(ps.ctf.phase_shift, dtype=torch.float32)
    h = ctf_2d(freqs, **values, phase_shift=phase, bfactor=torch.tensor(ps.ctf.bfactor, dtype=torch.float32))
    assert h[0, 0] == pytest.approx(-0.1, abs=1e-6) and h[1, 0] == pytest.approx(-0.07, abs=1e-6)
    for i in range(N):
        single = {c: v[i : i + 1] for c, v in values.items()}
        alone = ctf_2d(freqs, **single)
        if i == 1:  # B = 50 Å² damps by exp(−B s²/4)
            alone = alone * torch.exp(-50.0 * (freqs**2).sum(1) / 4)
        if i == 3:  # a 90° phase shift: H(0) = √(1−w²)·sin(−90°) − w·cos(−90°) = −√(1−w²)
            assert h[3, 0] == pytest.approx(-np.sqrt(1 - 0.07**2), abs=1e-5)
            continue
        torch.testing.assert_close(h[i], alone[0], atol=1e-6, rtol=1e-5)


def test_different_pixel_sizes_across_optics_groups_are_refused(write_star):
    path = write_star(optics={"rlnImagePixelSize": (1, 2.5)})
    with pytest.raises(
        ParticleFileError, match=r"optics groups 1 and 2.*2 and 2.5 Å.*Fix: re-extract"
    ) as err:
        load_particles(path)
    assert "\n" not in str(err.value)


def test_optics_group_defined_twice_is_refused(write_star):
    path = write_star(optics={"rlnOpticsGroup": (1, 1)})
    with pytest.raises(ParticleFileError, match="data_optics row 2, column rlnOpticsGroup: group 1"):
        load_particles(path)
