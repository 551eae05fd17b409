"""A STAR listing images twice: reconstruct and backproject use each image once, and say so."""

import json

import numpy as np
import starfile

from napari_cryospin.cli import main
from napari_cryospin.data.particles import load_particles

TINY = [
    "--heads", "2", "--epochs", "2", "--explore-epochs", "0", "--switch", "1", "--device", "cpu",
    "--encoder-width", "4", "--encoder-box", "16", "--batch-size", "50",
]  # fmt: skip


def _twice(tiny_dataset, folder, name, n=100):
    """``name`` (a STAR of the tiny data set) with its first ``n`` rows listed twice, in ``folder``."""
    blocks = starfile.read(tiny_dataset / name, always_dict=True)
    rows = blocks["particles"].iloc[np.r_[0:n, 0:n]].reset_index(drop=True)
    stack = tiny_dataset / "particles.mrcs"
    rows["rlnImageName"] = [f"{image.split('@')[0]}@{stack}" for image in rows["rlnImageName"]]
    path = folder / f"twice_{name}"
    starfile.write({**blocks, "particles": rows}, path)
    return path


def test_reconstruct_uses_each_image_once(tiny_dataset, tmp_path, caplog):
    star = _twice(tiny_dataset, tmp_path, "particles.star")
    out = tmp_path / "run"
    assert main(["reconstruct", str(star), "--out", str(out), *TINY]) == 0
    says = "twice_particles.star: 100 of 200 rows repeat an image listed earlier (e.g. row 101"
    assert says in caplog.text
    assert len(load_particles(out / "poses.star")) == 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["repeated_images_dropped"] == 100


def test_backproject_uses_each_image_once(tiny_dataset, tmp_path, caplog):
    star = _twice(tiny_dataset, tmp_path, "truth.star")
    out = tmp_path / "bp"
    assert main(["backproject", str(star), "--out", str(out)]) == 0
    assert "100 of 200 rows repeat an image" in caplog.text
    assert json.loads((out / "fsc.json").read_text())["n"] == 100
