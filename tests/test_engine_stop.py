"""A stop asked during the halves' alignment (the long stretch at the end of exploration) is taken there."""

from napari_cryospin.engine.checkpoint import load_checkpoint
from napari_cryospin.engine.config import RunConfig
from napari_cryospin.engine.engine import Engine
from napari_cryospin.engine.events import Command, Stage
from napari_cryospin.metrics import alignment
from tiny_run import TINY_RUN


def test_a_stop_during_the_halves_alignment_is_taken_between_its_chunks(tiny_dataset, tmp_path, monkeypatch):
    scored = []  # the alignment's scoring passes (each of 64 rotations per chunk)
    scores = alignment._scores
    monkeypatch.setattr(alignment, "_scores", lambda *a, **k: scored.append(1) or scores(*a, **k))
    out = tmp_path / "run"
    config = RunConfig(particles=str(tiny_dataset / "particles.star"), out=str(out), **TINY_RUN)
    engine = Engine(config, views=False)
    asked = []
    engine.poll = lambda: asked.append(1) or Command("stop")  # as SIGTERM or the dock's Stop would
    gen = engine.run()
    snap = next(gen)
    while snap.epoch < config.explore_epochs:  # up to the end of exploration
        snap = gen.send(None)
    assert not asked and not engine.model.halves_aligned
    snap = gen.send(None)  # the halves' alignment starts, and hears the stop at its first chunk
    assert snap.stage == Stage.DONE and snap.message.startswith("stopped at epoch 2; checkpoint saved")
    assert len(asked) == 1 and len(scored) == 1  # stopped in the first pass
    state = load_checkpoint(out)
    assert state["stage"] == Stage.EXPLORING.value and not state["halves_aligned"]  # resumes at the alignment
    assert state["epoch"] == config.explore_epochs
