"""``cryospin evaluate``: particles matched by image (not row order), mismatches refused, messages exact."""

import json

import mrcfile
import numpy as np
import pytest
import starfile

from napari_cryospin.cli import main
from napari_cryospin.data.mrc import read_volume, write_volume


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _evaluate(capsys, *args) -> tuple[int, list[str], list[str]]:
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, _lines(captured.out), _lines(captured.err)


def _shuffled_truth(tiny_dataset, path, seed=1, rows=None):
    """truth.star's rows in another order (optionally only ``rows``), image paths made absolute."""
    blocks = starfile.read(tiny_dataset / "truth.star", always_dict=True)
    table = blocks["particles"]
    stack = tiny_dataset / "particles.mrcs"
    table["rlnImageName"] = [f"{name.split('@')[0]}@{stack}" for name in table["rlnImageName"]]
    order = np.random.default_rng(seed).permutation(len(table)) if rows is None else rows
    starfile.write({**blocks, "particles": table.iloc[order].reset_index(drop=True)}, path)
    return path


def test_shuffled_poses_are_matched_by_image(tiny_dataset, tmp_path, capsys):
    poses = _shuffled_truth(tiny_dataset, tmp_path / "poses.star")
    report = tmp_path / "eval.json"
    code, _, err = _evaluate(
        capsys, "--truth", tiny_dataset / "truth.star", "--poses", poses, "--json", report
    )
    assert code == 0, err
    numbers = json.loads(report.read_text())
    assert numbers["n"] == 200
    assert numbers["rotation_error_median_deg"] < 1e-3 and numbers["shift_error_median_px"] < 1e-3


def test_poses_of_other_images_are_refused(tiny_dataset, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "truth.star").write_text((tiny_dataset / "truth.star").read_text())
    with mrcfile.new(other / "particles.mrcs") as mrc:  # same names and count, other images
        mrc.set_data(np.random.default_rng(0).normal(size=(200, 32, 32)).astype(np.float32))
    truth = tiny_dataset / "truth.star"
    code, out, err = _evaluate(capsys, "--truth", truth, "--poses", other / "truth.star")
    assert code == 2 and out == [] and len(err) == 1
    assert err[0].startswith(
        f"cryospin evaluate: error: {other / 'truth.star'}: 200 of the 200 images of {truth} have no pose "
        f"there (e.g. 000001@particles.mrcs), and 200 of its images are not in {truth}"
    )
    subset = _shuffled_truth(tiny_dataset, tmp_path / "some.star", rows=np.arange(150))
    code, _, err = _evaluate(capsys, "--truth", truth, "--poses", subset)
    assert (
        code == 2 and f"{subset}: 50 of the 200 images of {truth} have no pose there (e.g. 000151@" in err[0]
    )


def test_a_copied_stack_holds_the_same_images(tiny_dataset, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("truth.star", "particles.mrcs"):
        (copy / name).write_bytes((tiny_dataset / name).read_bytes())
    report = tmp_path / "eval.json"
    truth = tiny_dataset / "truth.star"
    code, _, err = _evaluate(capsys, "--truth", truth, "--poses", copy / "truth.star", "--json", report)
    assert code == 0, err
    assert json.loads(report.read_text())["rotation_error_median_deg"] < 1e-3


def test_map_messages_name_both_files_and_the_shape(tiny_dataset, tmp_path, capsys):
    truth = tiny_dataset / "truth.star"
    true_map = tiny_dataset / "truth_volume.mrc"
    (tmp_path / "big").mkdir()
    big = tmp_path / "big" / "truth_volume.mrc"
    write_volume(big, np.zeros((64, 64, 64), np.float32), read_volume(true_map)[1])
    code, _, err = _evaluate(capsys, "--truth", truth, "--volume", big, "--volume-truth", true_map)
    assert code == 2 and err == [
        f"cryospin evaluate: error: {big} is 64³ but {true_map} is 32³. Fix: compare maps of the same box."
    ]
    stack = tiny_dataset / "particles.mrcs"
    code, _, err = _evaluate(capsys, "--truth", truth, "--volume", stack, "--volume-truth", true_map)
    assert code == 2 and f"{stack} is 200×32×32, not a cubic map" in err[0]


@pytest.mark.parametrize("target", ["folder", "under a file"])
def test_json_errors_name_the_json_option_not_out(tiny_dataset, tmp_path, capsys, target):
    path = tmp_path
    if target == "under a file":
        (tmp_path / "a_file").write_text("")
        path = tmp_path / "a_file" / "eval.json"
    truth = tiny_dataset / "truth.star"
    code, _, err = _evaluate(capsys, "--truth", truth, "--poses", truth, "--json", path)
    assert code != 0 and len(err) == 1
    assert "--out" not in err[0] and f"{path}" in err[0] and "--json" in err[0]
