"""A finished run read back: maps, FSC, per-particle scores, posteriors from the checkpoint, STAR export."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile

from napari_cryospin.data.errors import ParticleFileError
from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.run_results import POSE_CHANGE, export_selection, pose_rotations, read_run


def test_read_run_has_maps_fsc_and_engine_scores(finished_run):
    results = read_run(finished_run)
    assert results.volume.shape == (32, 32, 32) and results.voxel_size > 0
    assert results.half_maps is not None and results.fsc is not None and results.resolution > 0
    assert results.finished and results.has_checkpoint and results.heads == 3
    table = results.table
    assert len(table) == 200
    for column in ("head", "loss", "confidence", POSE_CHANGE):
        assert column in table.columns
    assert set(np.unique(table["head"])) <= {0, 1, 2, 3, 4}  # 1-based heads, 4 = kept/search pose
    assert (table["loss"] > 0).all() and table["confidence"].notna().any()
    assert (table[POSE_CHANGE] >= 0).all()
    rot = pose_rotations(results.poses)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-6)


def test_extra_numeric_column_becomes_a_score(finished_run, tmp_path):
    """A junk score another tool adds to poses.star shows up in the table; text columns do not."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    blocks = starfile.read(copy / "poses.star", always_dict=True)
    blocks["particles"]["rlnJunkScore"] = np.linspace(0.0, 1.0, len(blocks["particles"]))
    starfile.write(blocks, copy / "poses.star")
    table = read_run(copy).table
    assert "JunkScore" in table.columns and "ImageName" not in table.columns
    np.testing.assert_allclose(table["JunkScore"].iloc[[0, -1]], [0.0, 1.0])


def test_export_selection_keeps_poses_and_finds_the_images(finished_run, tmp_path):
    results = read_run(finished_run)
    rows = np.flatnonzero(results.table["loss"] <= results.table["loss"].median())
    out = tmp_path / "elsewhere" / "subset.star"
    out.parent.mkdir()
    assert export_selection(results, rows, out) == len(rows)
    subset = load_particles(out)
    assert len(subset) == len(rows)
    np.testing.assert_allclose(subset.rotations, pose_rotations(results.poses)[rows], atol=1e-4)
    original = load_particles(finished_run / "poses.star")
    np.testing.assert_allclose(subset.stack[[0]], original.stack[[rows[0]]])


def _last_epoch(folder) -> str:
    return sorted(p.name for p in (folder / "epochs").glob("epoch_*.npz"))[-1]


def _pickled_rotations(path) -> None:
    np.savez(path, rotations=np.array([{"not": "an array"}], dtype=object))  # numpy refuses to unpickle it


DAMAGED = {  # file → (damage, what the one warning line starts with)
    "metrics list": ("metrics.json", "[1, 2]", "metrics.json is not a metrics file (expected an object"),
    "metrics fsc text": (
        "metrics.json",
        '{"final": {"fsc": "abc", "resolution": 20.0}}',
        "metrics.json is not a metrics file (expected an object",
    ),
    "metrics epochs text": ("metrics.json", '{"epochs": "many"}', "metrics.json is not a metrics file"),
    "metrics not json": ("metrics.json", "{not json", "metrics.json could not be read (Expecting"),
    "epoch not a zip": ("epoch", b"not a zip file", "epochs/epoch_"),
    "epoch with objects": ("epoch", _pickled_rotations, "epochs/epoch_"),
}


@pytest.mark.parametrize(("name", "damage", "says"), DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_optional_file_is_named_and_the_rest_opens(finished_run, tmp_path, name, damage, says):
    """The map and the table open; the unreadable file is named in one line (never numpy's or torch's
    advice to load it unsafely) and only what it held is missing."""
    folder = Path(shutil.copytree(finished_run, tmp_path / "run"))
    path = folder / ("epochs/" + _last_epoch(folder) if name == "epoch" else name)
    if callable(damage):
        damage(path)
    elif isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        path.write_text(damage)
    results = read_run(folder)
    assert results.volume is not None and results.half_maps is not None and len(results.table) == 200
    assert len(results.problems) == 1 and results.problems[0].startswith(says), results.problems
    assert "\n" not in results.problems[0] and "allow_pickle" not in results.problems[0]
    if name == "metrics.json":
        assert results.problems[0].endswith(": shown without metrics")
        assert results.history == [] and results.fsc is None and results.resolution is None
    else:
        assert results.problems[0].endswith(": shown without the pose change")
        assert POSE_CHANGE not in results.table.columns and results.fsc is not None
    assert results.finished


@pytest.mark.parametrize("content", [b"\x00garbage", b"[]", b'{"command": 3}'], ids=["bytes", "list", "keys"])
def test_a_garbage_run_record_is_not_a_finished_run(finished_run, tmp_path, content):
    folder = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (folder / "run.json").write_bytes(content)
    results = read_run(folder)
    assert not results.finished and "unfinished" in results.summary()
    assert len(results.problems) == 1 and results.problems[0].startswith("run.json ")
    assert results.problems[0].endswith(": the run is shown as unfinished")
    assert results.volume is not None and len(results.table) == 200


def test_a_folder_where_nothing_reads_is_one_clear_line(tmp_path):
    (tmp_path / "volume.mrc").write_bytes(b"not a map" * 100)
    (tmp_path / "poses.star").write_text("not a star file\n")
    says = r"nothing in it could be read \(volume\.mrc .*poses\.star .*Fix:"
    with pytest.raises(ParticleFileError, match=says):
        read_run(tmp_path)


def test_not_a_run_folder_is_one_clear_line(tmp_path):
    with pytest.raises(ParticleFileError, match=r"not a cryoSPIN run folder.*Fix:"):
        read_run(tmp_path)


def test_exported_selection_runs_in_reconstruct_and_backproject(finished_run, tmp_path):
    """The acceptance path: brush → export → both commands take the STAR as their input."""
    from napari_cryospin.cli import main
    from napari_cryospin.data.mrc import read_volume

    results = read_run(finished_run)
    rows = np.flatnonzero(results.table["loss"] <= np.quantile(results.table["loss"], 0.7))
    star = tmp_path / "subset.star"
    export_selection(results, rows, star)
    assert main(["backproject", str(star), "--out", str(tmp_path / "bp")]) == 0
    assert read_volume(tmp_path / "bp" / "volume.mrc")[0].shape == (32, 32, 32)
    tiny = ["--heads", "2", "--epochs", "1", "--explore-epochs", "0", "--switch", "1", "--device", "cpu"]
    tiny += ["--encoder-width", "4", "--encoder-box", "16", "--batch-size", "50"]
    assert main(["reconstruct", str(star), "--out", str(tmp_path / "re"), *tiny]) == 0
    assert len(load_particles(tmp_path / "re" / "poses.star")) == len(rows)


def test_the_summary_names_the_resolution_as_the_run_reported_it(tmp_path):
    """The explorer's line and the run's verdict call the same number the same way."""
    from napari_cryospin.engine.run_results import RunResults

    line = RunResults(tmp_path, None, 1.0, None, resolution=7.7).summary()
    assert "7.7 Å (mask-corrected FSC 0.143)" in line and "half-map" not in line


def test_an_unreliable_run_states_its_number_as_the_halves_agreement(tmp_path):
    """A run its verdict finds unreliable: the explorer does not call the half maps' FSC a resolution."""
    from napari_cryospin.engine.run_results import RunResults

    line = RunResults(tmp_path, None, 1.0, None, resolution=9.0, reliable=False).summary()
    assert "halves agree to 9.0 Å" in line and "NOT reliable" in line
