"""One model of a run: a run folder browsed (the run explorer's ``SavedRun``) is the run the engine had —
its working box, its particle file wherever napari was started, and the same picture of any particle."""

import os

import numpy as np

from napari_cryospin.engine import working_box
from napari_cryospin.engine.checkpoint import save_checkpoint
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.saved_run import SavedRun
from tiny_run import TINY_RUN


def _saved_engine(particles: str, out, **settings) -> Engine:
    """An engine built (not run) on ``particles``, its checkpoint written to ``out`` as an epoch end would."""
    config = RunConfig(particles=particles, out=str(out), **{**TINY_RUN, **settings})
    engine = Engine(config)
    engine._build()
    save_checkpoint(engine.out, engine._state())
    engine._release_folder()
    return engine


def test_a_run_at_a_working_box_below_the_stack_box_is_browsed_at_its_working_box(
    tiny_dataset, tmp_path, monkeypatch
):
    with monkeypatch.context() as patch:  # the 32-px stack is served at 16 px, as a 256-px one at 64
        patch.setitem(working_box.WORKING_BOX, "cpu", 16)
        engine = _saved_engine(str(tiny_dataset / "particles.star"), tmp_path / "run")
    assert engine.identity["box"] == 16  # the run worked at 16 px
    run = SavedRun(tmp_path / "run")  # opened with the default cap (64): the checkpoint decides
    assert run.n == 200
    view = run.particle_view(3, refined=False)
    assert view.image.shape == view.projection.shape == (16, 16)
    assert np.isfinite(view.log_posterior).all()


def test_a_run_started_with_a_relative_path_opens_from_another_folder(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_dataset.parent)
    relative = os.path.join(tiny_dataset.name, "particles.star")
    _saved_engine(relative, tmp_path / "run", explore_epochs=0, switch=1)
    monkeypatch.chdir(tmp_path)  # napari started elsewhere
    assert not os.path.exists(relative)
    run = SavedRun(tmp_path / "run")
    assert run.n == 200 and run.particle_view(0, refined=False).image.shape == (32, 32)


def test_the_explorer_draws_a_particle_as_the_live_run_does(tiny_dataset, tmp_path):
    """Same candidates, errors, projection and posterior, the noise model's whitening included (the
    default noise model weighs the tiny set's shells unevenly, so leaving it out changes every number)."""
    engine = _saved_engine(str(tiny_dataset / "particles.star"), tmp_path / "run", explore_epochs=0, switch=1)
    engine._selected = 5
    live = engine._particle_view(with_posterior=True)
    saved = SavedRun(tmp_path / "run").particle_view(5)
    np.testing.assert_allclose(saved.candidate_losses[:3], live.candidate_losses[:3], rtol=1e-5)  # heads
    assert live.labels == saved.labels == ["head 1", "head 2", "head 3"]  # no kept pose before an epoch
    np.testing.assert_allclose(saved.image, live.image, atol=1e-6)
    np.testing.assert_allclose(saved.projection, live.projection, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(saved.log_posterior, live.log_posterior, atol=1e-4)
    assert saved.winner == live.winner


def test_the_explorer_marks_the_mates_of_the_group_the_run_detected(tiny_dataset, tmp_path):
    import json

    from napari_cryospin.geometry.symmetry import group_operators

    _saved_engine(str(tiny_dataset / "particles.star"), tmp_path / "run", explore_epochs=0, switch=1)
    run = SavedRun(tmp_path / "run")
    assert run.particle_view(2, refined=False).mates is None  # no metrics.json: nothing detected
    frame = group_operators("C4")[1]  # the detected axes, turned by 90° about z
    found = {"group": "C3", "frame": frame.tolist()}
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"final": {"symmetry": found}}))
    view = SavedRun(tmp_path / "run").particle_view(2, refined=False)  # opened again: the run's record read
    winner = view.candidates[view.winner]
    expected = frame @ group_operators("C3")[1:] @ frame.T @ winner
    assert view.mates_group == "C3"
    np.testing.assert_allclose(view.mates, expected, atol=1e-5)
