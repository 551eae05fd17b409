"""Postprocessing of half maps: the mask correction of the FSC, the Guinier B, the automatic mask and the
local resolution, each on maps whose answer is known."""

import json
import logging

import numpy as np
import pytest
from scipy import ndimage

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.metrics.fsc import fsc, soft_mask
from napari_cryospin.postprocess.fsc_correction import mask_corrected_fsc, randomise_phases
from napari_cryospin.postprocess.local_resolution import local_resolution
from napari_cryospin.postprocess.mask import auto_mask
from napari_cryospin.postprocess.sharpen import fsc_weight, guinier_fit, sharpen
from napari_cryospin.postprocess.shells import apply_per_shell, cosine_lowpass, rfft_radius


def _band_limited(box: int, shell: float, rng) -> np.ndarray:
    """White noise (D, D, D) with every Fourier shell above ``shell`` removed."""
    spectrum = np.fft.rfftn(rng.normal(size=(box,) * 3))
    spectrum[rfft_radius((box,) * 3) > shell] = 0
    return np.fft.irfftn(spectrum, s=(box,) * 3)


def test_phase_randomisation_keeps_amplitudes_and_decorrelates_beyond_the_shell():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(32, 32, 32))
    rand = randomise_phases(vol, 8, rng)
    curve = fsc(vol, rand, 1.0)[1]
    assert np.all(curve[1:7] > 0.999)  # untouched below the shell
    assert np.abs(curve[10:]).max() < 0.15  # phases unrelated beyond it
    amp = [np.abs(np.fft.rfftn(v)) for v in (vol, rand)]
    assert np.allclose(amp[0][rfft_radius(vol.shape) > 9], amp[1][rfft_radius(vol.shape) > 9], rtol=1e-6)


def test_mask_correction_removes_the_correlation_a_tight_mask_adds():
    """The halves share only a low-resolution structure (shells ≤ 6); their own noise is independent, so
    the true FSC beyond shell 8 is 0. A sharp-edged mask spreads the shared structure to every shell."""
    box, rng = 48, np.random.default_rng(1)
    shared = 4.0 * _band_limited(box, 6, rng) / _band_limited(box, 6, np.random.default_rng(9)).std()
    half_a = shared + rng.normal(size=shared.shape)
    half_b = shared + rng.normal(size=shared.shape)
    mask = soft_mask(box, 12, 0)  # hard edge: the worst case
    curves = mask_corrected_fsc(half_a, half_b, mask, 1.0, seed=0)
    beyond = slice(10, box // 2 + 1)
    assert np.abs(curves.unmasked[beyond]).mean() < 0.03  # unmasked: no correlation there
    assert curves.masked[beyond].mean() > 0.15  # masked: the mask's own correlation
    assert curves.randomised_from is not None and curves.randomised_from <= 8
    assert np.abs(curves.corrected[beyond]).mean() < 0.05  # corrected: gone
    # the reported resolution stays within the margin RELION keeps past the randomisation's start
    assert curves.resolution > 1 / curves.frequency[curves.randomised_from + 3]


def _blurred_white_noise(box: int, voxel: float, bfactor: float, seed: int = 2) -> np.ndarray:
    """A map with flat amplitudes (white noise, a Wilson-like spectrum) times ``exp(−B s²/4)``."""
    flat = np.random.default_rng(seed).normal(size=(box,) * 3)
    s2 = (np.arange(box // 2 + 1) / (box * voxel)) ** 2
    return apply_per_shell(flat, np.exp(-bfactor * s2 / 4))


@pytest.mark.parametrize("bfactor", [0.0, 60.0, 150.0])
def test_guinier_fit_recovers_a_known_b_factor(bfactor):
    """From 10 Å to 3.2 Å (1.5 Å/px): the fit gives the applied B back, and sharpening undoes it."""
    fit = guinier_fit(_blurred_white_noise(64, 1.5, bfactor), 1.5, resolution=3.2)
    assert fit.fitted == pytest.approx(bfactor, rel=0.03, abs=2.0)
    assert fit.applied == pytest.approx(max(fit.fitted, 0.0)) and fit.shells >= 15
    assert fit.fit_range == (10.0, 3.2)
    assert fit.reason is None or bfactor == 0.0  # a B of 0 may fit a hair below it (not sharpened)


@pytest.mark.parametrize("resolution", [8.0, 12.0, 25.0])
def test_no_guinier_fit_short_of_7_angstrom(resolution):
    """10 Å to 8 Å is too short a range for a line (and 12 Å, 25 Å hold none): B is not fitted, not
    applied, and the reason says which resolution it would take."""
    fit = guinier_fit(_blurred_white_noise(64, 3.0, 500.0), 3.0, resolution)
    assert fit.fitted is None and fit.applied == 0.0 and fit.bfactor == 0.0
    assert "7.07 Å or better" in fit.reason
    assert json.loads(json.dumps(fit.to_dict()))["bfactor"] is None


def test_no_guinier_fit_on_too_few_shells():
    """Box 16 at 1 Å/px: 10 Å to 3 Å is long enough in s² but holds 4 shells."""
    fit = guinier_fit(_blurred_white_noise(16, 1.0, 50.0), 1.0, 3.0)
    assert fit.fitted is None and fit.shells == 4 and fit.applied == 0.0
    assert "4 shells" in fit.reason


def test_rising_amplitudes_are_not_sharpened():
    """A map sharpened already (B = −80 Å²): the fit finds it, and applies nothing."""
    fit = guinier_fit(_blurred_white_noise(64, 1.5, -80.0), 1.5, 3.2)
    assert fit.fitted == pytest.approx(-80.0, rel=0.05)
    assert fit.applied == 0.0 and "negative" in fit.reason
    assert fit.summary().startswith("not sharpened")


def test_a_runaway_b_is_capped_at_a_hundredfold_boost():
    """B = 300 Å² at 3.2 Å would raise the amplitudes there 1500-fold: applied at 4·3.2²·ln 100 Å²."""
    fit = guinier_fit(_blurred_white_noise(64, 1.5, 300.0), 1.5, 3.2)
    assert fit.fitted == pytest.approx(300.0, rel=0.03)
    assert fit.applied == pytest.approx(4 * 3.2**2 * np.log(100.0))
    assert "capped" in fit.reason and fit.to_dict()["sharpening_bfactor"] == -fit.applied


def test_sharpening_fits_b_on_the_masked_map_and_undoes_it():
    """A blurred particle (B = 100 Å²) in strong white solvent noise: the fit under the mask finds B, and
    the sharpened map's amplitudes inside the mask are flat again."""
    box, voxel, bfactor = 64, 1.0, 100.0
    rng = np.random.default_rng(5)
    s2 = (np.arange(box // 2 + 1) / (box * voxel)) ** 2
    mask = soft_mask(box, 20, 4)
    particle = apply_per_shell(rng.normal(size=(box,) * 3) * mask, np.exp(-bfactor * s2 / 4))
    vol = particle + 0.05 * rng.normal(size=particle.shape) * (1 - mask)
    sharpened, fit = sharpen(vol, voxel, 2.5, np.ones(box // 2 + 1), mask)
    assert fit.fitted == pytest.approx(bfactor, rel=0.05) and fit.applied == fit.fitted
    assert abs(guinier_fit(sharpened * mask, voxel, 3.0).fitted) < 0.1 * bfactor


def test_a_low_resolution_map_is_fsc_weighted_and_low_passed_but_not_sharpened(caplog):
    """At 15 Å there is no Guinier region: volume_sharpened.mrc is the FSC-weighted map low-pass filtered
    at the resolution, B 0 — and the run's log says why."""
    box, voxel, resolution = 48, 3.0, 15.0
    vol = _blurred_white_noise(box, voxel, 400.0, seed=6)
    curve = np.clip(1.0 - np.arange(box // 2 + 1) / 12.0, 0.0, 1.0)
    with caplog.at_level(logging.INFO):
        sharpened, fit = sharpen(vol, voxel, resolution, curve, np.ones_like(vol))
    assert fit.fitted is None and fit.applied == 0.0
    expected = cosine_lowpass(apply_per_shell(vol, fsc_weight(curve)), voxel, resolution)
    np.testing.assert_allclose(sharpened, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert any(r.levelname == "WARNING" and "no Guinier region" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def particle():
    """The bundled box-64 map and two noisy half maps of it (noise σ = the map's σ)."""
    from napari_cryospin.resources import bundled_map_path

    volume, voxel = read_volume(bundled_map_path(64))
    rng = np.random.default_rng(3)
    sigma = float(volume.std())
    halves = [volume + rng.normal(0, sigma, volume.shape).astype(np.float32) for _ in range(2)]
    return volume, halves, voxel


def test_auto_mask_covers_the_particle_and_leaves_the_solvent_out(particle):
    volume, (half_a, half_b), voxel = particle
    mask, info = auto_mask(0.5 * (half_a + half_b), half_a, half_b, voxel)
    assert mask.dtype == np.float32 and mask.min() >= 0.0 and mask.max() <= 1.0
    strong = volume > 0.2 * volume.max()
    assert mask[strong].min() > 0.99  # every strong density inside
    assert (mask > 0.5).mean() < 0.35 and info["fraction_of_box"] < 0.35  # a particle, not the box
    corners = soft_mask(64, 30, 0) == 0
    assert mask[corners].max() == 0.0  # the solvent at the box's edge is out


def test_the_mask_edge_is_soft_in_voxels_at_coarse_sampling(particle):
    """At 5 Å/px the 6 Å edge would be one voxel: the edge is at least RELION's 6 voxels wide instead."""
    _, (half_a, half_b), _ = particle
    coarse = 5.0
    mask, info = auto_mask(0.5 * (half_a + half_b), half_a, half_b, coarse)
    assert info["soft_edge_A"] == 6 * coarse and info["dilate_A"] == 3 * coarse
    inside = mask > 0.999
    distance = ndimage.distance_transform_edt(~inside)  # voxels from the full-weight region
    edge = (mask > 0.01) & (mask < 0.999)
    assert distance[edge].max() >= 5  # the raised cosine spans several voxels, not one


def test_local_resolution_is_finer_where_the_halves_agree():
    """The same structure in both halves; little noise for x < D/2, much for x ≥ D/2."""
    box, rng = 48, np.random.default_rng(4)
    shared = rng.normal(size=(box,) * 3)
    noise = np.where(np.arange(box) < box // 2, 0.3, 3.0)[None, None, :]
    half_a = shared + noise * rng.normal(size=shared.shape)
    half_b = shared + noise * rng.normal(size=shared.shape)
    mask = soft_mask(box, 18, 2)
    local, info = local_resolution(half_a, half_b, mask, 1.0, resolution=3.0)
    assert local.shape == (box,) * 3 and info["centres"] > 50
    inside = mask > 0.5
    left = np.median(local[inside & (np.arange(box) < box // 2 - 4)[None, None, :]])
    right = np.median(local[inside & (np.arange(box) >= box // 2 + 4)[None, None, :]])
    assert left < 0.75 * right
