"""The Run explorer on a finished tiny run: open, table, posterior follows a click, brush, export."""

import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd

from napari_cryospin._napari._explorer import RUN_MAP, RunExplorer
from napari_cryospin._napari._map_display import MapDisplay, default_iso_level, slice_layer_name
from napari_cryospin._napari._plots import RunPlots
from napari_cryospin._napari._posterior_view import PosteriorView
from napari_cryospin._napari._reader import get_run_reader
from napari_cryospin._napari._volume import show_volume
from napari_cryospin.data.particles import load_particles

LONG_MS = 120_000  # a loaded machine: the checkpoint and each posterior take seconds each


def _drag(qtbot, canvas, ax, x0: float, x1: float) -> None:
    """Press at data x0, move and release at x1 (mid-height of ``ax``), as a user brushing a range."""
    from qtpy.QtCore import QPoint, Qt

    canvas.draw()
    y = float(np.mean(ax.get_ylim()))
    ratio = canvas.devicePixelRatioF()
    points = []
    for x in (x0, x1):
        px, py = ax.transData.transform((x, y))
        points.append(QPoint(int(px / ratio), int(canvas.height() - py / ratio)))
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=points[0])
    qtbot.mouseMove(canvas, points[1])
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=points[1])


def test_explorer_opens_a_run_browses_posteriors_brushes_and_exports(
    qtbot, ui_viewer, finished_run, tmp_path, monkeypatch
):
    import napari_cryospin._napari._explorer as explorer_module

    threads = []
    real_load = explorer_module.load_model

    def recording_load(folder):
        threads.append(threading.current_thread() is threading.main_thread())
        return real_load(folder)

    monkeypatch.setattr(explorer_module, "load_model", recording_load)
    posterior, plots, explorer = PosteriorView(ui_viewer), RunPlots(ui_viewer), RunExplorer(ui_viewer)
    for widget in (posterior, plots, explorer):
        qtbot.addWidget(widget)
    live = show_volume(ui_viewer, np.ones((16, 16, 16), np.float32), 2.0)  # a live run's map
    explorer.open_folder(finished_run)
    qtbot.waitUntil(lambda: explorer.model is not None, timeout=LONG_MS)
    assert threads == [False]  # torch came in a worker thread, not the GUI's
    assert ui_viewer.layers[RUN_MAP].data.shape == (32, 32, 32)
    assert ui_viewer.layers[RUN_MAP].visible and not live.visible  # one map at a time, in Å
    assert ui_viewer.scale_bar.visible and str(ui_viewer.layers[RUN_MAP].units[0]) == "angstrom"
    assert len(plots.trace.loss) == len(explorer.results.history) == 3  # the run's history, every epoch
    assert explorer.column_combo.currentText() == "confidence"  # a score that separates particles
    header = explorer.table_model.headerData
    head = list(explorer.table_model.frame.columns).index("head")
    tips = [
        header(column, explorer_module.Qt.Orientation.Horizontal, explorer_module.Qt.ItemDataRole.ToolTipRole)
        for column in range(explorer.table_model.columnCount())
    ]
    assert "counted from 1" in tips[head] and all(tips), tips  # every column explained in plain words
    assert "run half A" in ui_viewer.layers and not ui_viewer.layers["run half A"].visible
    assert explorer.table_model.rowCount() == 200
    assert plots.trace.fsc is not None and plots.bar_heights().sum() > 99.0
    qtbot.waitUntil(lambda: posterior.view is not None and posterior.view.index == 0, timeout=LONG_MS)

    # Sort by loss, worst first, and click the top row: the posterior dock follows that particle.
    columns = list(explorer.table_model.frame.columns)
    explorer.table.sortByColumn(columns.index("loss"), explorer_module.Qt.SortOrder.DescendingOrder)
    worst = int(explorer.table_model.frame["loss"].idxmax())
    rect = explorer.table.visualRect(explorer.proxy.index(0, 0))
    qtbot.mouseClick(explorer.table.viewport(), explorer_module.Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: posterior.view is not None and posterior.view.index == worst, timeout=LONG_MS)
    assert posterior.particle_spin.value() == worst
    assert posterior.view.zoom is not None and posterior.view.labels[-1] == "pose"

    # Brush the lower half of the loss histogram, then export the selection.
    explorer.column_combo.setCurrentText("loss")
    loss = explorer.table_model.frame["loss"].to_numpy()
    low, high = float(loss.min()), float(np.median(loss))
    _drag(qtbot, explorer.canvas, explorer.hist_ax, low, high)
    assert 0 < len(explorer.selection) < 200
    span = loss[explorer.selection]
    assert span.min() >= low - 0.05 * (high - low) and span.max() <= high + 0.05 * (high - low)
    assert explorer.export_button.isEnabled()
    out = tmp_path / "selected.star"
    assert explorer.export_to(out) == len(explorer.selection)
    assert len(load_particles(out)) == len(explorer.selection)
    explorer.clear_selection()
    assert not explorer.export_button.isEnabled()
    explorer.close()  # the live map comes back
    assert live.visible and not ui_viewer.layers[RUN_MAP].visible


def test_open_a_folder_that_is_no_run_says_so(qtbot, ui_viewer, tmp_path):
    from qtpy.QtCore import QThreadPool

    # Earlier tests' posterior workers may still hold the thread pool (2 threads on 2 cores) under load.
    assert QThreadPool.globalInstance().waitForDone(LONG_MS)
    explorer = RunExplorer(ui_viewer)
    qtbot.addWidget(explorer)
    explorer.open_folder(tmp_path)  # its worker may fail before a signal connected here would hear it
    qtbot.waitUntil(lambda: "not a cryoSPIN run folder" in explorer.status.text(), timeout=LONG_MS)
    assert "Fix:" in explorer.status.text()


def test_run_folder_reader_gives_iso_map_and_hidden_halves(finished_run, tmp_path):
    reader = get_run_reader(str(finished_run))
    assert reader is not None and get_run_reader(str(tmp_path)) is None
    layers = reader(str(finished_run))
    names = [meta["name"] for _, meta, _ in layers]
    assert names == ["run map", "run map, local resolution (Å)", "run half A", "run half B"]
    data, meta, kind = layers[0]
    assert kind == "image" and meta["rendering"] == "iso" and data.min() < meta["iso_threshold"] < data.max()
    assert meta["metadata"]["run_folder"] == str(finished_run)


def test_map_display_iso_slices_and_updates(qtbot, ui_viewer):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(32, 32, 32)).astype(np.float32)
    volume[12:20, 12:20, 12:20] += 10.0
    level = default_iso_level(volume)
    assert 4.0 < level < 10.0  # above the noise, below the particle
    display = MapDisplay(ui_viewer, "map")
    layer = ui_viewer.add_image(volume, name="map")
    assert abs(display.iso_level.value - level) < 1e-3
    display.rendering.value = "iso-surface"
    assert layer.rendering == "iso" and layer.iso_threshold == display.iso_level.value
    layer.data = volume + 1.0  # an update before the user chose a level: the default follows the map
    assert abs(display.iso_level.value - default_iso_level(volume + 1.0)) < 1e-3
    display.iso_level.value = 7.5
    qtbot.waitUntil(lambda: layer.iso_threshold == 7.5)
    display.rendering.value = "slices"
    names = [slice_layer_name("map", axis) for axis in "zyx"]
    assert all(ui_viewer.layers[n].depiction == "plane" for n in names) and not layer.visible
    layer.data = 2 * volume  # the map updates: slices follow, the choice stays
    assert ui_viewer.layers[names[0]].data.max() == layer.data.max()
    assert display.rendering.value == "slices" and display.iso_level.value == 7.5  # the user's level stays
    display.rendering.value = "MIP"
    assert layer.visible and layer.rendering == "mip" and not ui_viewer.layers[names[0]].visible


def test_a_level_change_pending_when_the_form_is_deleted_is_harmless(qtbot, ui_viewer):
    """The slider's throttled update fires 100 ms later; by then a closed dock's Qt widgets may be gone."""
    from qtpy import sip

    volume = np.zeros((16, 16, 16), np.float32)
    volume[6:10, 6:10, 6:10] = 1.0
    layer = ui_viewer.add_image(volume, name="map")
    display = MapDisplay(ui_viewer, "map")
    display.rendering.value = "iso-surface"
    display.iso_level.value = 0.25
    sip.delete(display.native)  # what Qt does to a closed dock's children
    qtbot.wait(300)  # an exception in the pending update would fail the test here (pytest-qt)
    assert layer.iso_threshold == 0.25


def test_explorer_import_does_not_load_torch():
    code = "import sys, napari_cryospin._napari._explorer; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


def test_the_selection_label_stays_below_the_plot_in_a_short_dock(qtbot, ui_viewer):
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QWidget

    holder = QWidget()
    qtbot.addWidget(holder)
    explorer = RunExplorer(ui_viewer)
    explorer.setParent(holder)
    explorer.setGeometry(0, 0, 360, 400)  # shorter than its content, as a squeezed dock
    table = pd.DataFrame({"particle": np.arange(50), "confidence": np.linspace(-5.0, 40.0, 50)})
    explorer.results = SimpleNamespace(table=table, poses=None)
    explorer.column_combo.addItem("confidence")
    holder.show()
    explorer.select_range(-5.0, 10.0)
    label, canvas = explorer.selection_label, explorer.canvas
    qtbot.waitUntil(lambda: label.height() >= label.heightForWidth(label.width()))
    assert label.text().startswith("17 of 50 particles with confidence in")
    label_top = label.mapTo(explorer, QPoint(0, 0)).y()
    assert label_top >= canvas.mapTo(explorer, QPoint(0, canvas.height())).y()  # not under the plot
