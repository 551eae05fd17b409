"""A tiny real run (box 32, 200 particles, CPU) driven through the docks on a GUI-free ViewerModel."""

import os
import time

import numpy as np
import pytest
from qtpy.QtWidgets import QMessageBox

from napari_cryospin._napari._dock import ReconstructionDock
from napari_cryospin._napari._plots import RunPlots
from napari_cryospin._napari._posterior_view import PosteriorView
from napari_cryospin._napari._volume import MAP_LAYER
from napari_cryospin.engine.events import Stage
from napari_cryospin.engine.folder_lock import FolderLock

MINUTE_MS = 60_000


def _wait(qtbot, dock, condition, minutes: float = 2.0) -> None:
    """Wait for `condition`, giving up early when the run ends (an engine error fails fast)."""
    qtbot.waitUntil(lambda: condition() or not dock.running, timeout=int(minutes * MINUTE_MS))
    assert condition(), dock.status.text()


@pytest.fixture
def ui_dock(qtbot, ui_viewer, ui_tiny_particles, tmp_path):
    """The reconstruction dock set up for a 3-head, 20-epoch manual-switch CPU run; stopped at teardown."""
    dock = ReconstructionDock(ui_viewer)
    qtbot.addWidget(dock)
    settings = dock.settings
    settings.set_particles(str(ui_tiny_particles))
    settings.inputs["out"].edit.setText(str(tmp_path / "run"))
    settings.inputs["heads"].setValue(3)
    settings.inputs["epochs"].setValue(20)
    settings.inputs["switch"].combo.setCurrentText("manual")
    settings.inputs["device"].setCurrentIndex(settings.inputs["device"].findData("cpu"))
    settings.inputs["batch_size"].setValue(32)
    yield dock
    if dock.worker is not None:  # qtbot may have closed (and deleted) the dock: closing stops the run too
        assert dock.worker.stop_and_wait(), "the run did not stop"


def test_run_updates_map_switches_once_and_stops_resumably(qtbot, ui_viewer, ui_dock, tmp_path):
    posterior, plots = PosteriorView(ui_viewer), RunPlots(ui_viewer)
    qtbot.addWidget(posterior)
    qtbot.addWidget(plots)
    posterior.select_particle(5)
    ui_dock.start_button.click()
    assert ui_dock.running and not ui_dock.start_button.isEnabled()

    _wait(qtbot, ui_dock, lambda: MAP_LAYER in ui_viewer.layers)
    layer = ui_viewer.layers[MAP_LAYER]
    assert layer.data.ndim == 3 and ui_viewer.dims.ndisplay == 3
    assert layer.scale[0] > 1.0
    first_map = np.array(layer.data)

    _wait(qtbot, ui_dock, lambda: posterior.view is not None)
    view = posterior.view
    assert view.index == 5 and len(posterior.head_artists) == len(view.labels)
    assert view.labels[0] == "grid 1"  # the run starts with 8 exploration epochs: top grid candidates
    assert len(plots.bar_heights()) == 0  # no heads yet

    assert ui_dock.switch_button.isEnabled()
    ui_dock.switch_button.click()
    assert not ui_dock.switch_button.isEnabled()
    _wait(qtbot, ui_dock, lambda: ui_dock.hub.last.stage == Stage.DECODING)
    assert plots.bar_heights().sum() == pytest.approx(100.0)  # the heads' shares once they exist
    _wait(qtbot, ui_dock, lambda: not np.array_equal(layer.data, first_map))
    assert not ui_dock.switch_button.isEnabled()
    assert ui_viewer.layers[MAP_LAYER] is layer

    worker = ui_dock.worker
    with qtbot.waitSignal(worker.finished, timeout=MINUTE_MS):
        asked = time.perf_counter()
        ui_dock.stop_button.click()
    assert time.perf_counter() - asked < 15.0  # about a second on an idle machine
    assert not ui_dock.running and ui_dock.hub.last.stage == Stage.DONE
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert ui_dock.resume_button.isEnabled() and ui_dock.start_button.isEnabled()

    stopped_step = ui_dock.hub.last.step
    ui_dock.resume_button.click()
    _wait(
        qtbot,
        ui_dock,
        lambda: ui_dock.hub.last.stage == Stage.DECODING and ui_dock.hub.last.step > stopped_step,
    )
    assert not ui_dock.switch_button.isEnabled()


def test_stack_without_ctf_is_refused_with_a_message(qtbot, ui_dock, io_write_stack, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_cryospin._napari._dock.show_error", shown.append)
    path, _ = io_write_stack(name="bare.mrcs", n=4, box=16)
    ui_dock.settings.inputs["particles"].edit.setText(str(path))
    ui_dock.start()
    qtbot.waitUntil(lambda: not ui_dock.running, timeout=MINUTE_MS)
    assert len(shown) == 1 and "bare.mrcs" in shown[0] and "Traceback" not in shown[0]
    assert not ui_dock.running and ui_dock.start_button.isEnabled()


def _fake_results(out):
    out.mkdir(parents=True)
    for name in ("volume.mrc", "poses.star", "metrics.json"):
        (out / name).write_text("old")


def test_start_asks_before_replacing_another_run(qtbot, ui_dock, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fake_results(out)
    asked = []

    def answer(reply):
        def question(parent, title, text, *args):
            asked.append(text)
            return reply

        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    ui_dock.start_button.click()
    assert not ui_dock.running and ui_dock.status.text().startswith("Not started")
    assert str(out) in asked[0] and "volume.mrc" in asked[0]
    assert (out / "volume.mrc").read_text() == "old"

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    ui_dock.start_button.click()
    assert ui_dock.running and len(asked) == 2
    _wait(qtbot, ui_dock, lambda: not (out / "volume.mrc").exists())  # the engine removed the old run
    assert not (out / "poses.star").exists()  # written only when a run ends: the old one is gone
    with qtbot.waitSignal(ui_dock.worker.finished, timeout=3 * MINUTE_MS):
        ui_dock.stop()


def test_resume_from_a_damaged_checkpoint_is_one_line(qtbot, ui_dock, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_cryospin._napari._dock.show_error", shown.append)
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    ui_dock.settings.out_changed.emit()
    assert ui_dock.resume_button.isEnabled()
    ui_dock.resume_button.click()
    qtbot.waitUntil(lambda: not ui_dock.running, timeout=MINUTE_MS)
    assert len(shown) == 1
    assert shown[0].startswith(f"{out / 'checkpoint.pt'}: not a checkpoint this program wrote")
    assert "\n" not in shown[0] and "Fix:" in shown[0]


def test_closing_the_dock_stops_its_run_with_a_checkpoint(qtbot, ui_dock, tmp_path):
    ui_dock.settings.inputs["explore_epochs"].setValue(0)
    ui_dock.start_button.click()
    _wait(qtbot, ui_dock, lambda: ui_dock.hub.last is not None)  # the engine is training
    ui_dock.close()
    assert ui_dock._done.is_set()  # closing waited for the engine to finish
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    qtbot.waitUntil(lambda: not ui_dock.running, timeout=MINUTE_MS)


def test_a_folder_another_run_is_using_is_refused_and_kept(qtbot, ui_dock, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_cryospin._napari._dock.show_error", shown.append)
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.Yes)
    out = tmp_path / "run"
    _fake_results(out)
    with FolderLock(out):  # a CLI run (or another dock) working there
        ui_dock.start_button.click()
        qtbot.waitUntil(lambda: not ui_dock.running, timeout=MINUTE_MS)
    assert len(shown) == 1 and shown[0].startswith(f"{out}: another cryospin run is using this folder (pid ")
    assert f"pid {os.getpid()} on host" in shown[0] and "\n" not in shown[0]
    assert all((out / name).read_text() == "old" for name in ("volume.mrc", "poses.star", "metrics.json"))
