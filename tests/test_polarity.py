"""Polarity: decided from the data, applied to every image read, recorded; maps come out positive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryospin.cli import build_parser, main
from napari_cryospin.cli.reconstruct import config_from_args
from napari_cryospin.data.particles import load_particles
from napari_cryospin.diagnostics.polarity import choose_polarity, measure_polarity
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.resources import bundled_map_path
from napari_cryospin.simulation.simulate import simulate_to_dir


@pytest.fixture(scope="module")
def dark_and_white(tmp_path_factory) -> tuple[Path, Path]:
    """300 box-32 particles of the bundled map (dark protein, SNR 0.3, truth poses) and the negated copy."""
    from napari_cryospin.data.mrc import read_volume

    dark = tmp_path_factory.mktemp("dark")
    volume, voxel = read_volume(bundled_map_path(32))
    simulate_to_dir(volume, voxel, 300, dark, snr=0.3, max_shift_px=1.0, seed=5)
    white = tmp_path_factory.mktemp("white")
    for name in ("particles.star", "truth.star", "truth_volume.mrc"):
        shutil.copy(dark / name, white / name)
    with mrcfile.open(dark / "particles.mrcs") as mrc, mrcfile.new(white / "particles.mrcs") as neg:
        neg.set_data(-mrc.data)
        neg.voxel_size = mrc.voxel_size
    return dark, white


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _centre_minus_shell(volume: np.ndarray) -> float:
    box = volume.shape[0]
    g = np.arange(box) - box // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    return float(volume[r < box / 4].mean() - volume[(r >= 0.3 * box) & (r < 0.42 * box)].mean())


def test_measure_flips_with_the_stack_and_is_confident(dark_and_white):
    dark, white = (measure_polarity(load_particles(d / "particles.star")) for d in dark_and_white)
    assert (dark.detected, white.detected) == ("dark", "white")
    assert dark.z > 5 and white.z < -5 and dark.agree == white.agree == 1.0
    assert dark.contrast == pytest.approx(-white.contrast, rel=1e-4)
    assert dark.n_particles == 300 and dark.subsets == 8


def test_pure_noise_gives_no_confident_polarity(io_write_stack, tmp_path, dark_and_white):
    """Images without a particle: the z-score stays small (the evidence is not an artefact)."""
    dark, _ = dark_and_white
    io_write_stack("noise.mrcs", n=300, box=32, pixel_size=6.62, seed=1)
    shutil.copy(dark / "particles.star", tmp_path / "noise.star")
    text = (tmp_path / "noise.star").read_text().replace("@particles.mrcs", "@noise.mrcs")
    (tmp_path / "noise.star").write_text(text)
    evidence = measure_polarity(load_particles(tmp_path / "noise.star"))
    assert abs(evidence.z) < 3 and abs(evidence.contrast) < 0.5
    assert "weak evidence" in choose_polarity(load_particles(tmp_path / "noise.star")).warning


def test_user_choice_is_honoured_with_a_warning(dark_and_white):
    dark, _ = dark_and_white
    particles = load_particles(dark / "particles.star")
    forced = choose_polarity(particles, "white")
    assert forced.sign == -1.0 and forced.polarity == "white" and forced.evidence.detected == "dark"
    assert "inverted" in forced.warning and "set by the user" in forced.summary()
    assert choose_polarity(particles, "dark").warning == ""
    with pytest.raises(ValueError, match="polarity must be one of auto, dark, white"):
        choose_polarity(particles, "bright")
    with pytest.raises(ValueError, match="polarity must be one of"):
        RunConfig(particles="p.star", out="o", polarity="inverted")


def test_backproject_gives_the_same_positive_map_for_both_stacks(dark_and_white, tmp_path, capsys):
    maps, reports = [], []
    for i, folder in enumerate(dark_and_white):
        out = tmp_path / f"bp{i}"
        assert main(["backproject", str(folder / "truth.star"), "--out", str(out)]) == 0
        maps.append(mrcfile.read(out / "volume.mrc"))
        reports.append(json.loads((out / "fsc.json").read_text())["polarity"])
    assert "protein white, inverted (auto" in capsys.readouterr().out
    truth = mrcfile.read(dark_and_white[0] / "truth_volume.mrc")
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5 * np.abs(maps[0]).max())
    assert _corr(maps[0], truth) > 0.8
    assert [r["polarity"] for r in reports] == ["dark", "white"]
    assert [r["evidence"]["detected"] for r in reports] == ["dark", "white"]
    # Forced to the wrong polarity, the map is honestly inverted, and the record says so.
    out = tmp_path / "forced"
    assert (
        main(["backproject", str(dark_and_white[0] / "truth.star"), "--out", str(out), "--polarity", "white"])
        == 0
    )
    assert _corr(mrcfile.read(out / "volume.mrc"), truth) < -0.8
    forced = json.loads((out / "fsc.json").read_text())["polarity"]
    assert forced["mode"] == "white" and "inverted" in forced["warning"]


def _config(folder: Path, out: Path, **kw) -> RunConfig:
    return RunConfig(
        particles=str(folder / "particles.star"),
        out=str(out),
        heads=2,
        epochs=1,
        explore_epochs=1,
        switch=None,
        device="cpu",
        encoder_width=4,
        encoder_box=16,
        batch_size=50,
        snapshot_interval_s=0.0,
        eval_every=1,
        **kw,
    )


def test_engine_same_positive_map_for_both_stacks_and_records_polarity(dark_and_white, tmp_path):
    volumes, firsts = [], []
    for i, folder in enumerate(dark_and_white):
        snaps = list(Engine(_config(folder, tmp_path / f"run{i}")).run())
        first = next(s for s in snaps if s.volume is not None)
        firsts.append(first.volume)
        assert first.polarity.startswith("protein dark" if i == 0 else "protein white, inverted")
        assert first.polarity in first.message and first.polarity in snaps[-1].message
        metrics = json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())
        assert metrics["config"]["polarity"] == "auto"
        assert metrics["polarity"]["polarity"] == ("dark", "white")[i]
        assert abs(metrics["polarity"]["evidence"]["z"]) > 5
        volumes.append(mrcfile.read(tmp_path / f"run{i}" / "volume.mrc"))
    assert _centre_minus_shell(firsts[0]) > 0 and _centre_minus_shell(firsts[1]) > 0
    np.testing.assert_allclose(volumes[0], volumes[1], atol=1e-4 * np.abs(volumes[0]).max())
    truth = mrcfile.read(dark_and_white[0] / "truth_volume.mrc")
    assert _centre_minus_shell(volumes[0]) > 0 and _corr(volumes[0], truth) > 0


def test_engine_forced_white_on_a_dark_stack_is_recorded(dark_and_white, tmp_path):
    snaps = list(Engine(_config(dark_and_white[0], tmp_path / "run", polarity="white")).run())
    first = next(s for s in snaps if s.volume is not None)
    assert _centre_minus_shell(first.volume) < 0  # the user said white: the dark stack is inverted
    assert "warning" in first.polarity
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["polarity"] == "white" and metrics["polarity"]["sign"] == -1.0
    assert metrics["polarity"]["evidence"]["detected"] == "dark"


def test_reconstruct_cli_passes_polarity():
    parser = build_parser()
    args = parser.parse_args(["reconstruct", "p.star", "--out", "o", "--polarity", "white"])
    assert config_from_args(args).polarity == "white"
    assert config_from_args(parser.parse_args(["reconstruct", "p.star", "--out", "o"])).polarity == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["reconstruct", "p.star", "--out", "o", "--polarity", "grey"])
