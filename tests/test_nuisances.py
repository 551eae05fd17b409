"""The simulator's nuisances of real stacks: each one does what docs/simulation.md says (box 32, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from napari_cryospin.cli import main
from napari_cryospin.data.particles import load_particles
from napari_cryospin.physics.reconstruction import backproject
from napari_cryospin.resources import bundled_map_path
from napari_cryospin.simulation.nuisances import EMPTY, OTHER, PARTICLE, Nuisances, noise_filter
from napari_cryospin.simulation.simulate import simulate


@pytest.fixture(scope="module")
def small_map() -> tuple[np.ndarray, float]:
    """The bundled 32-box map and its voxel size."""
    with mrcfile.open(bundled_map_path(32)) as mrc:
        return mrc.data.astype(np.float32), float(mrc.voxel_size.x)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _high_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two maps' spectra beyond a quarter of Nyquist (where CTF details matter)."""
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    f = np.fft.fftfreq(a.shape[0])
    high = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2) > 0.125
    num = (fa[high] * fb[high].conj()).real.sum()
    return float(num / np.sqrt((np.abs(fa[high]) ** 2).sum() * (np.abs(fb[high]) ** 2).sum()))


def _radial_power(images: np.ndarray) -> np.ndarray:
    """Mean power per integer radius (cycles per box) of the images' spectra."""
    box = images.shape[-1]
    power = (np.abs(np.fft.fftshift(np.fft.fft2(images), axes=(-2, -1))) ** 2).mean(0)
    g = np.arange(box) - box // 2
    r = np.rint(np.hypot(g[:, None], g[None, :])).astype(int)
    return np.bincount(r.ravel(), power.ravel()) / np.bincount(r.ravel())


def test_default_nuisances_change_nothing(small_map):
    volume, voxel = small_map
    plain = simulate(volume, voxel, 20, seed=4)
    explicit = simulate(volume, voxel, 20, seed=4, nuisances=Nuisances())
    np.testing.assert_array_equal(plain.images, explicit.images)
    assert not plain.junk.any() and np.all(plain.intensity_scale == 1) and np.all(plain.optics_group == 1)


def test_coloured_noise_has_more_power_at_low_frequency_and_the_same_variance(small_map):
    volume, voxel = small_map
    clean = simulate(volume, voxel, 200, snr=None, seed=2)
    white = simulate(volume, voxel, 200, snr=0.1, seed=2).images - clean.images
    coloured = simulate(volume, voxel, 200, snr=0.1, seed=2, nuisances=Nuisances(coloured_noise=True))
    noise = coloured.images - clean.images
    assert noise.var() == pytest.approx(white.var(), rel=0.05)
    power = _radial_power(noise)
    assert power[1:3].mean() > 4 * power[12:16].mean()
    flat = _radial_power(white)
    assert flat[1:3].mean() == pytest.approx(flat[12:16].mean(), rel=0.3)
    assert noise_filter(32).shape == (32, 17)


def test_bfactor_envelope_and_intensity_scale(small_map):
    volume, voxel = small_map
    base = simulate(volume, voxel, 8, snr=None, seed=6, oversampling=False)
    damped = simulate(
        volume, voxel, 8, snr=None, seed=6, oversampling=False, nuisances=Nuisances(bfactor=300)
    )
    box = volume.shape[0]
    f = np.fft.fftfreq(box) / base.pixel_size
    s2 = f[:, None] ** 2 + f[None, :] ** 2
    a, b = np.fft.fft2(base.images), np.fft.fft2(damped.images)
    big = np.abs(a) > 1e-3 * np.abs(a).max()
    expected = np.broadcast_to(np.exp(-300 * s2 / 4), a.shape)
    np.testing.assert_allclose((b / np.where(big, a, 1)).real[big], expected[big], rtol=1e-3, atol=1e-4)
    scaled = simulate(
        volume, voxel, 8, snr=None, seed=6, oversampling=False, nuisances=Nuisances(intensity_spread=0.3)
    )
    ratio = (scaled.images * base.images).sum((1, 2)) / (base.images**2).sum((1, 2))
    np.testing.assert_allclose(ratio, scaled.intensity_scale, rtol=1e-4)
    assert scaled.intensity_scale.std() > 0.1


def test_junk_kinds_replace_particles_and_are_marked(small_map):
    volume, voxel = small_map
    clean = simulate(volume, voxel, 200, snr=None, seed=8)
    junky = simulate(volume, voxel, 200, snr=None, seed=8, nuisances=Nuisances(junk_fraction=0.3))
    assert np.bincount(junky.junk_kind).tolist() == [140, 30, 30]
    keep = junky.junk_kind == PARTICLE
    np.testing.assert_array_equal(junky.images[keep], clean.images[keep])
    corr = np.array(
        [_corr(a, b) if a.std() > 0 else 0.0 for a, b in zip(junky.images, clean.images, strict=True)]
    )
    assert np.median(corr[junky.junk_kind == EMPTY]) < 0.3 and np.median(corr[junky.junk_kind == OTHER]) < 0.8
    assert (np.abs(junky.images[junky.junk_kind == OTHER]).sum((1, 2)) > 0).all()


def test_realistic_cli_set_reads_back_and_backprojects_positive(tmp_path: Path, capsys):
    out = tmp_path / "real"
    argv = ["simulate", "bundled", "--n", "400", "--box", "32", "--snr", "inf", "--seed", "3",
            "--astigmatism", "1500", "--bfactor", "50", "--coloured-noise", "--junk", "0.15",
            "--polarity", "white", "--normalize", "--optics2", "100", "1.4", "0.07", "--max-shift", "6",
            "--intensity-spread", "0.2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "60 junk images" in capsys.readouterr().out
    user = starfile.read(out / "particles.star")
    optics = user["optics"]
    assert optics["rlnVoltage"].tolist() == [300, 100] and optics["rlnSphericalAberration"].tolist() == [
        2.7,
        1.4,
    ]
    truth = starfile.read(out / "truth.star")["particles"]
    junk = np.load(out / "junk.npy")
    np.testing.assert_array_equal(junk, truth["rlnClassNumber"].to_numpy() != 1)
    assert sorted(set(truth["rlnClassNumber"])) == [1, 2, 3] and junk.sum() == 60
    assert "rlnClassNumber" not in user["particles"].columns and "rlnCtfScalefactor" in truth.columns

    ps = load_particles(out / "truth.star")
    group = user["particles"]["rlnOpticsGroup"].to_numpy()
    assert set(group) == {1, 2}
    np.testing.assert_allclose(ps.ctf.voltage, np.where(group == 1, 300, 100))
    np.testing.assert_allclose(ps.ctf.bfactor, 50)
    images = ps.stack[:]
    g = np.arange(32) - 16
    outside = np.hypot(g[:, None], g[None, :]) > 12
    np.testing.assert_allclose(images[:, outside].mean(1), 0, atol=1e-4)
    blank = images.std((1, 2)) == 0  # noise-free empty picks without ice: nothing to normalise
    assert junk[blank].all()
    np.testing.assert_allclose(images[~blank][:, outside].std(1), 1, atol=1e-3)
    # Protein white: a plain known-pose backprojection of the particles is inverted density ...
    truth_map = mrcfile.read(out / "truth_volume.mrc")
    good = ps.subset(np.flatnonzero(~junk))
    assert _corr(backproject(good, good.rotations, good.shifts), truth_map) < -0.5
    # ... and each optics group's CTF matters: group 2's particles with group 1's optics do worse.
    second = ps.subset(np.flatnonzero(~junk & (group == 2)))
    right = _high_corr(-backproject(second, second.rotations, second.shifts), truth_map)
    second.ctf.voltage[:], second.ctf.cs[:], second.ctf.amplitude_contrast[:] = 300.0, 2.7, 0.1
    wrong = _high_corr(-backproject(second, second.rotations, second.shifts), truth_map)
    assert wrong < right - 0.1, (right, wrong)
    # `cryospin backproject` (junk included) detects the polarity and writes the inverted, positive map.
    assert main(["backproject", str(out / "truth.star"), "--out", str(tmp_path / "bp")]) == 0
    report = json.loads((tmp_path / "bp" / "fsc.json").read_text())
    assert report["polarity"]["polarity"] == "white" and report["polarity"]["evidence"]["z"] < -3
    written = mrcfile.read(tmp_path / "bp" / "volume.mrc")
    plain = backproject(ps, ps.rotations, ps.shifts)
    np.testing.assert_allclose(written, -plain, atol=1e-4 * np.abs(plain).max())
    assert _corr(written, truth_map) > 0.1
