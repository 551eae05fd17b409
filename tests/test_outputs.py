"""Final outputs: the independent halves are registered to a fraction of a voxel before they are combined."""

from types import SimpleNamespace

import numpy as np
import torch

from napari_cryospin.data.particles import load_particles
from napari_cryospin.engine.distributed import DataParallel
from napari_cryospin.engine.outputs import _gold_standard
from napari_cryospin.metrics.alignment import FrameChange
from napari_cryospin.metrics.translation import best_translation
from napari_cryospin.physics.reconstruction import split_halves


def test_half_b_is_moved_onto_half_a_by_a_sub_voxel_translation(tiny_dataset):
    """Half B's poses describe a map whose origin sits 0.4–0.5 voxel off half A's (as after a whole-voxel
    alignment): the written maps and poses are brought back into A's frame, so the true shifts return."""
    truth = load_particles(tiny_dataset / "truth.star")
    particles = load_particles(tiny_dataset / "particles.star")
    n = len(truth)
    halves = np.zeros(n, np.int64)
    halves[split_halves(n, 0)[1]] = 1
    in_b = halves == 1
    offset = np.array([0.4, -0.5, 0.45])
    _, moved = FrameChange(np.eye(3), False, offset, np.zeros((2, 2, 2))).poses(
        truth.rotations[in_b], truth.shifts[in_b]
    )
    shifts = truth.shifts.astype(np.float32).copy()
    shifts[in_b] = moved
    model = SimpleNamespace(  # a stand-in run model
        particles=particles,
        halves=torch.from_numpy(halves),
        halves_aligned=True,
        config=SimpleNamespace(seed=0),
        symmetry=None,  # no point group (RunModel.symmetry: its operators)
        device=torch.device("cpu"),
        dp=DataParallel(),
        current_poses=lambda: (truth.rotations.astype(np.float32), shifts),
    )
    _, half_a, half_b, _, registered = _gold_standard(model)
    assert np.linalg.norm(best_translation(half_b, half_a)) < 0.1
    assert np.median(np.linalg.norm(registered[in_b] - truth.shifts[in_b], axis=1)) < 0.15
    assert np.median(np.linalg.norm(moved - truth.shifts[in_b], axis=1)) > 0.4  # there was something to undo
    np.testing.assert_array_equal(registered[~in_b], shifts[~in_b])  # half A keeps its own frame
    # Not registered while the halves are still in their own frames (during exploration).
    model.halves_aligned = False
    *_, unregistered = _gold_standard(model)
    np.testing.assert_array_equal(unregistered, shifts)


def test_the_last_line_calls_an_unreliable_runs_number_an_agreement_not_a_resolution(tmp_path):
    from napari_cryospin.engine.outputs import _summary_line

    model = SimpleNamespace(polarity=SimpleNamespace(summary=lambda: "protein dark (auto, z 60)"))
    post = SimpleNamespace(resolution=9.04, guinier=SimpleNamespace(applied=None))
    reliable = _summary_line(model, tmp_path, post, (64, 64), "validity: agree", True)
    unreliable = _summary_line(model, tmp_path, post, (64, 64), "WARNING: the map is not reliable (…)", False)
    assert reliable.startswith("done: 9.0 Å (mask-corrected FSC 0.143")
    assert unreliable.startswith("done: the half maps agree to 9.0 Å, not a resolution the run stands behind")


def test_the_last_line_says_how_many_particles_the_encoder_posed_and_how_often_it_was_wrong():
    from napari_cryospin.engine.outputs import _extra_notes

    semi = {
        "explored": 2000,
        "encoder_posed": 3000,
        "audit": 300,
        "audit_wrong_share": 0.12,
        "grid_searched": 650,
    }
    line = _extra_notes(0, True, None, semi)
    assert "2000 particles explored, 3000 posed by the encoder" in line
    assert "the audit found 12% of its 300 wrong" in line and "650 grid-searched" in line
    assert _extra_notes(0, True, None, None) == ""
