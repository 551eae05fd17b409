"""Known-pose backprojection on a small inline simulation, half maps, pose/map alignment, and ribosome70s."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from napari_cryospin.geometry.rotations import matrix_to_euler, random_rotations
from napari_cryospin.metrics.alignment import (
    MIRROR,
    align_maps,
    align_rotations,
    align_volume,
    fsc_to_truth,
    rotate_volume,
)
from napari_cryospin.metrics.fsc import fsc, resolution_at
from napari_cryospin.physics.ctf import ctf_2d
from napari_cryospin.physics.fourier import fftn_centered, frequency_grid_2d, ifftn_centered
from napari_cryospin.physics.reconstruction import backproject, half_maps, split_halves
from napari_cryospin.physics.shifts import centering_phase
from napari_cryospin.physics.slicing import extract_slices

BOX = 32
APIX = 4.0
RIBOSOME = Path("/work/shared/data/ribosome70s")


class _Stack:
    """The part of ``ParticleStack`` that backprojection uses, over an in-memory array."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.box = images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx]


def _blob_volume(box: int = BOX, seed: int = 0) -> np.ndarray:
    """An asymmetric test map: Gaussian blobs of different sizes and weights inside radius box/4."""
    rng = np.random.default_rng(seed)
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((box, box, box))
    for _ in range(12):
        c = rng.uniform(-box / 4, box / 4, 3)
        s = rng.uniform(1.2, 2.5)
        vol += rng.uniform(0.5, 1.5) * np.exp(
            -((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s)
        )
    return vol.astype(np.float32)


def _ctf(n: int, rng: np.random.Generator) -> SimpleNamespace:
    du = rng.uniform(8000, 20000, n)
    return SimpleNamespace(
        defocus_u=du,
        defocus_v=du + rng.uniform(-300, 300, n),
        defocus_angle=rng.uniform(0, 180, n),
        voltage=np.full(n, 300.0),
        cs=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift=np.zeros(n),
        bfactor=np.zeros(n),
    )


def _simulate(vol: np.ndarray, rotations: np.ndarray, noise: float, seed: int = 0):
    """Images of ``vol`` by the project's forward model (slice, CTF, RELION-sign shift) plus white noise."""
    rng = np.random.default_rng(seed)
    n = len(rotations)
    ctf = _ctf(n, rng)
    shifts = rng.uniform(-2, 2, (n, 2))
    k = frequency_grid_2d(BOX).reshape(-1, 2)
    spectrum = fftn_centered(torch.as_tensor(vol), 3)
    slices = extract_slices(spectrum, torch.as_tensor(rotations, dtype=torch.float32), k)
    params = {key: torch.as_tensor(v, dtype=torch.float32) for key, v in vars(ctf).items()}
    h = ctf_2d(k / (BOX * APIX), **params)
    phase = centering_phase(k / BOX, torch.as_tensor(shifts, dtype=torch.float32)).conj()
    images = ifftn_centered((h * slices * phase).reshape(n, BOX, BOX), 2).real.numpy()
    images = images + noise * images.std() * rng.standard_normal(images.shape)
    particles = SimpleNamespace(stack=_Stack(images.astype(np.float32)), ctf=ctf, pixel_size=APIX)
    return particles, shifts


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def simulated():
    vol = _blob_volume()
    rotations = random_rotations(300, torch.Generator().manual_seed(1), torch.float64).numpy()
    particles, shifts = _simulate(vol, rotations, noise=1.0)
    rec = backproject(particles, rotations, shifts, batch_size=64)
    return SimpleNamespace(vol=vol, rotations=rotations, particles=particles, shifts=shifts, rec=rec)


def test_backproject_recovers_positive_density(simulated):
    assert simulated.rec.shape == simulated.vol.shape
    assert _corr(simulated.rec, simulated.vol) > 0.9


def test_wrong_shift_sign_is_worse(simulated):
    s = simulated
    bad = _corr(backproject(s.particles, s.rotations, -s.shifts), s.vol)
    assert _corr(s.rec, s.vol) > bad + 0.05


def test_half_maps_use_disjoint_halves(simulated):
    s = simulated
    idx_a, idx_b = split_halves(len(s.rotations), seed=3)
    assert np.intersect1d(idx_a, idx_b).size == 0
    assert np.array_equal(np.union1d(idx_a, idx_b), np.arange(len(s.rotations)))
    assert abs(len(idx_a) - len(idx_b)) <= 1
    full, half_a, half_b = half_maps(s.particles, s.rotations, s.shifts, seed=3)
    np.testing.assert_allclose(full, s.rec, atol=1e-5)
    np.testing.assert_allclose(
        half_a, backproject(s.particles, s.rotations, s.shifts, indices=idx_a), atol=1e-5
    )
    _freq, values = fsc(half_a, half_b, APIX)
    assert values[1:6].min() > 0.8
    assert _corr(full, s.vol) > _corr(half_a, s.vol)


def test_bad_pose_shape_is_a_clear_error(simulated):
    with pytest.raises(ValueError, match="poses do not match"):
        backproject(simulated.particles, simulated.rotations[:10], simulated.shifts)


@pytest.mark.parametrize("flip", [False, True])
def test_pose_and_map_alignment_agree(simulated, flip):
    """Reconstructing with R_est = A·G (G = R or F·R·F) gives a map that align_volume maps back to truth."""
    s = simulated
    a = random_rotations(1, torch.Generator().manual_seed(7), torch.float64).numpy()[0]
    g = MIRROR @ s.rotations @ MIRROR if flip else s.rotations
    r_est = a @ g
    result = align_rotations(r_est, s.rotations)
    assert result.flip is flip
    assert result.median < 1e-4
    np.testing.assert_allclose(result.rotation, a, atol=1e-6)
    rec_est = backproject(s.particles, r_est, s.shifts)
    assert _corr(rec_est, s.vol) < 0.5
    aligned = align_volume(rec_est, s.vol, result.rotation, result.flip)
    assert _corr(aligned, s.rec) > 0.95
    assert _corr(aligned, s.vol) > 0.9


def test_fsc_to_truth_searches_rotation_and_hand(simulated):
    s = simulated
    a = random_rotations(1, torch.Generator().manual_seed(11), torch.float64).numpy()[0]
    rec = backproject(s.particles, a @ MIRROR @ s.rotations @ MIRROR, s.shifts)
    searched = fsc_to_truth(rec, s.vol, APIX, n_coarse=300)
    given = fsc_to_truth(rec, s.vol, APIX, rotation=a, flip=True)
    direct = resolution_at(*fsc(s.rec, s.vol, APIX), 0.5)
    assert searched.flip
    assert np.degrees(np.arccos((np.trace(searched.rotation.T @ a) - 1) / 2)) < 6
    assert _corr(searched.aligned, s.vol) > 0.85
    assert given.resolution(0.5) < 1.1 * direct
    assert searched.resolution(0.5) < 1.2 * direct


@pytest.mark.skipif(not RIBOSOME.is_dir(), reason=f"{RIBOSOME} (shared ribosome70s data) is not present")
def test_ribosome_known_poses_resolution():
    """Acceptance: true poses on ribosome70s give FSC 0.5 vs the true map ≤ 17.5 Å and positive density."""
    from napari_cryospin.data.mrc import read_volume
    from napari_cryospin.data.particles import load_particles

    particles = load_particles(RIBOSOME / "truth" / "particles_with_poses.star")
    truth, _ = read_volume(RIBOSOME / "truth" / "gt_volume.mrc")
    rec = backproject(particles, particles.rotations, particles.shifts)
    freq, values = fsc(rec, truth, particles.pixel_size)
    resolution = resolution_at(freq, values, 0.5)
    assert resolution <= 17.5, f"FSC 0.5 against the truth at {resolution:.2f} Å"
    assert _corr(rec, truth) > 0


def _write_star(folder: Path, s: SimpleNamespace, rotations: np.ndarray) -> Path:
    """A RELION 3.1 STAR file and stack of the simulated particles with the given poses."""
    folder.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(folder / "stack.mrcs", overwrite=True) as mrc:
        mrc.set_data(s.particles.stack.images.astype(np.float32))
        mrc.voxel_size = APIX
    n = len(rotations)
    euler = matrix_to_euler(torch.as_tensor(rotations)).numpy()
    ctf = s.particles.ctf
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [0.1],
            "rlnSphericalAberration": [2.7],
            "rlnVoltage": [300.0],
            "rlnImagePixelSize": [APIX],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
            "rlnOpticsGroup": np.ones(n, dtype=int),
            "rlnDefocusU": ctf.defocus_u,
            "rlnDefocusV": ctf.defocus_v,
            "rlnDefocusAngle": ctf.defocus_angle,
            "rlnAngleRot": euler[:, 0],
            "rlnAngleTilt": euler[:, 1],
            "rlnAnglePsi": euler[:, 2],
            "rlnOriginXAngst": s.shifts[:, 0] * APIX,
            "rlnOriginYAngst": s.shifts[:, 1] * APIX,
        }
    )
    path = folder / "particles.star"
    starfile.write({"optics": optics, "particles": particles}, path)
    return path


def test_backproject_and_evaluate_cli(simulated, tmp_path, capsys):
    from napari_cryospin.cli import backproject as backproject_cli
    from napari_cryospin.cli import evaluate as evaluate_cli
    from napari_cryospin.data.mrc import read_volume, write_volume

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    backproject_cli.add_parser(sub)
    evaluate_cli.add_parser(sub)
    star = _write_star(tmp_path / "data", simulated, simulated.rotations)
    truth_map = tmp_path / "truth.mrc"
    write_volume(truth_map, simulated.vol, APIX)
    out = tmp_path / "bp"
    args = parser.parse_args(["backproject", str(star), "--out", str(out), "--batch-size", "100"])
    assert args.run(args) == 0
    assert "half-map FSC 0.143" in capsys.readouterr().out
    vol, voxel = read_volume(out / "volume.mrc")
    assert voxel == pytest.approx(APIX)
    assert _corr(vol, simulated.vol) > 0.9
    assert {"half_a.mrc", "half_b.mrc", "fsc.png", "fsc.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "fsc.json").read_text())["resolution_0143"] < 4 * APIX

    a = random_rotations(1, torch.Generator().manual_seed(5), torch.float64).numpy()[0]
    r_est = a @ MIRROR @ simulated.rotations @ MIRROR
    est = _write_star(tmp_path / "est", simulated, r_est)
    est_map = tmp_path / "est.mrc"
    write_volume(est_map, backproject(simulated.particles, r_est, simulated.shifts), APIX)
    report = tmp_path / "eval.json"
    argv = ["evaluate", "--truth", str(star), "--poses", str(est), "--volume-truth", str(truth_map)]
    args = parser.parse_args([*argv, "--volume", str(est_map), "--json", str(report)])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "rotation error median (deg)" in printed and "FSC 0.5 vs truth" in printed
    numbers = json.loads(report.read_text())
    assert numbers["flip"] is True
    assert numbers["rotation_error_median_deg"] < 1e-3
    assert numbers["shift_error_median_px"] < 1e-3
    assert numbers["fsc_resolution_05"] < 4 * APIX

    args = parser.parse_args(["evaluate", "--truth", str(star)])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        args.run(args)


@pytest.mark.parametrize("flip", [False, True])
def test_frame_change_carries_poses_to_the_aligned_map(simulated, flip):
    """Poses re-expressed by ``align_maps`` backproject onto the map in the other frame (rotation, hand,
    whole-voxel shift), as well as the original poses onto the original map; the opposite shift does not."""
    a = random_rotations(1, torch.Generator().manual_seed(5), torch.float64).numpy()[0]
    other = np.roll(rotate_volume(simulated.vol, a @ MIRROR if flip else a), (1, -2, 2), axis=(0, 1, 2))
    change = align_maps(simulated.rec, other)
    assert change.flip == flip
    rot, shifts = change.poses(simulated.rotations, simulated.shifts)
    assert np.allclose(np.linalg.det(rot), 1.0)
    moved = backproject(simulated.particles, rot, shifts, batch_size=64)
    assert _corr(moved, other) > _corr(simulated.rec, simulated.vol) - 0.05
    wrong = backproject(simulated.particles, rot, 2 * simulated.shifts - shifts, batch_size=64)
    assert _corr(wrong, other) < _corr(moved, other) - 0.1
