"""Real napari Viewers (OpenGL: run under xvfb-run): docks from the manifest, the 3D map renders."""

import os

import numpy as np
import pytest

pytestmark = [
    pytest.mark.viewer,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run"),
]

WIDGETS = {
    "cryoSPIN reconstruction": "ReconstructionDock",
    "Pose posterior": "PosteriorView",
    "Run plots": "RunPlots",
}
MINUTE_MS = 60_000


def test_every_manifest_dock_opens_in_the_viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    for name, kind in WIDGETS.items():
        dock, widget = viewer.window.add_plugin_dock_widget("napari-cryospin", name)
        assert type(widget).__name__ == kind
        assert dock.widget() is widget and widget.window() is dock.window() is not dock  # docked
    assert {type(w).__name__ for w in viewer.window.dock_widgets.values()} == set(WIDGETS.values())


def _start_small_run(qtbot, viewer, particles, out):
    """A 2-head CPU run without exploration started from the dock; returns once the engine trains."""
    _, dock = viewer.window.add_plugin_dock_widget("napari-cryospin", "cryoSPIN reconstruction")
    settings = dock.settings
    settings.set_particles(str(particles))
    settings.inputs["out"].edit.setText(str(out))
    settings.inputs["heads"].setValue(2)
    settings.inputs["explore_epochs"].setValue(0)
    settings.inputs["device"].setCurrentIndex(settings.inputs["device"].findData("cpu"))
    dock.start_button.click()
    qtbot.waitUntil(lambda: dock.hub.last is not None or not dock.running, timeout=3 * MINUTE_MS)
    assert dock.running, dock.status.text()
    return dock


def test_closing_napari_stops_the_run_with_a_checkpoint(
    qtbot, make_napari_viewer, ui_tiny_particles, tmp_path
):
    viewer = make_napari_viewer()
    dock = _start_small_run(qtbot, viewer, ui_tiny_particles, tmp_path / "run")
    viewer.close()  # napari cancels its running tasks: the dock stops the engine and waits
    assert dock._done.is_set() and (tmp_path / "run" / "checkpoint.pt").is_file()


def test_removing_the_dock_stops_the_run_with_a_checkpoint(
    qtbot, make_napari_viewer, ui_tiny_particles, tmp_path
):
    viewer = make_napari_viewer()
    dock = _start_small_run(qtbot, viewer, ui_tiny_particles, tmp_path / "run")
    viewer.window.remove_dock_widget(dock)
    assert dock._done.is_set() and (tmp_path / "run" / "checkpoint.pt").is_file()
    qtbot.waitUntil(lambda: not dock.running, timeout=MINUTE_MS)


def test_bundled_map_renders_in_3d(make_napari_viewer):
    viewer = make_napari_viewer(show=True)  # an unshown canvas renders blank under Xvfb
    (layer,) = viewer.open_sample("napari-cryospin", "ace2_rbd_map")
    viewer.dims.ndisplay = 3
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert layer.rendering == "mip"
    assert shot[..., :3].std() > 5.0


def test_docks_opened_from_the_plugins_menu_fit_a_1920x1080_screen(qtbot, make_napari_viewer, tmp_path):
    from qtpy.QtWidgets import QApplication, QScrollArea

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    screen = window.screen().availableGeometry()
    assert (screen.width(), screen.height()) == (1920, 1080)  # xvfb-run -s "-screen 0 1920x1080x24"
    docks = [
        viewer.window.add_plugin_dock_widget("napari-cryospin", name)[0]
        for name in [*WIDGETS, "Run explorer"]
    ]
    qtbot.waitUntil(lambda: len(window.tabifiedDockWidgets(docks[0])) == len(docks) - 1, timeout=MINUTE_MS)
    for dock in docks:
        assert dock.minimumSizeHint().height() <= screen.height(), dock.name
    assert window.minimumSizeHint().height() <= screen.height()
    # A particle layer opened afterwards: the dock's "open stack" list names it, which widens its content.
    viewer.add_image(
        np.zeros((2, 8, 8)), name="simulated particles, " * 3, metadata={"particles_path": "p.star"}
    )
    window.setGeometry(screen)  # as a window manager's maximise does
    QApplication.processEvents()
    assert window.height() <= screen.height()
    for dock in docks:  # the one in front has at least the room it asks for: nothing squeezed or clipped
        dock.raise_()
        QApplication.processEvents()
        assert dock.widget().height() >= dock.widget().minimumSizeHint().height(), dock.name
        for area in dock.widget().findChildren(QScrollArea):  # a scrolled content is not cut on the right
            content = area.widget()
            fits = content.minimumSizeHint().width() <= content.width() <= area.viewport().width()
            assert fits or area.horizontalScrollBar().isVisible(), dock.name
    shot = viewer.window.screenshot(path=str(tmp_path / "docks.png"), flash=False)
    assert shot.shape[0] <= screen.height()


def test_a_dock_put_elsewhere_opens_there_again(qtbot, make_napari_viewer, ui_layout_file):
    from qtpy.QtCore import Qt

    names = ("cryoSPIN reconstruction", "Run plots", "Run explorer")

    def open_docks():
        viewer = make_napari_viewer(show=True)
        docks = [viewer.window.add_plugin_dock_widget("napari-cryospin", name)[0] for name in names]
        return viewer, viewer.window._qt_window, docks

    viewer, window, (dock, plots, explorer) = open_docks()
    qtbot.waitUntil(lambda: len(window.tabifiedDockWidgets(dock)) == 2, timeout=MINUTE_MS)
    window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, explorer)  # dragged to the left
    plots.setFloating(True)  # and this one floated
    plots.setGeometry(300, 200, 480, 700)
    qtbot.waitUntil(lambda: plots.geometry().topLeft().x() == 300)
    where = plots.geometry()
    viewer.close()
    assert ui_layout_file.is_file()

    viewer, window, (dock, plots, explorer) = open_docks()
    qtbot.waitUntil(lambda: plots.isFloating(), timeout=MINUTE_MS)
    assert window.dockWidgetArea(explorer) == Qt.DockWidgetArea.LeftDockWidgetArea
    assert window.dockWidgetArea(dock) == Qt.DockWidgetArea.RightDockWidgetArea
    assert plots.geometry().topLeft() == where.topLeft()


def test_the_advanced_header_stays_after_a_run(qtbot, make_napari_viewer):
    from napari_cryospin.engine.events import Snapshot, Stage

    viewer = make_napari_viewer(show=True)
    for name in WIDGETS:
        dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-cryospin", name)
        if name == "cryoSPIN reconstruction":
            front, dock = dock_widget, widget
    front.raise_()
    header = dock.settings.advanced._toggle_btn
    dock.worker = object()  # pretend a run is going: only the GUI side is under test here
    message = "done: 24.7 Å (mask-corrected FSC 0.143 of the 64-px half maps); " + "a long verdict; " * 20
    dock._on_snapshot(Snapshot(3, 9, Stage.DONE, 1.0, 90.0, 0.0, 0.8, 2.0, resolution=24.7, message=message))
    qtbot.waitUntil(lambda: dock.verdict.label.text().endswith("• a long verdict"))
    dock.worker = None
    dock._update_buttons()
    verdict = dock.verdict.label  # every line laid out (stacked docks clipped it, squeezed the header)
    qtbot.waitUntil(lambda: verdict.height() >= verdict.heightForWidth(verdict.width()) > 3 * header.height())
    assert header.isVisible() and header.height() >= header.sizeHint().height()


def test_the_verdict_fits_the_pop_up_and_the_dock_at_1080p(qtbot, make_napari_viewer, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication, QLabel

    import napari_cryospin._napari._dock as dock_module
    from napari_cryospin.engine.events import Snapshot, Stage

    shown = []
    monkeypatch.setattr(dock_module, "show_warning", shown.append)
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.setGeometry(window.screen().availableGeometry())
    frame, dock = viewer.window.add_plugin_dock_widget("napari-cryospin", "cryoSPIN reconstruction")
    out = tmp_path / ("a-long-folder-name-for-the-results-of-this-run-" * 2)
    message = (
        "done: the half maps agree to 8.1 Å, not a resolution the run stands behind (mask-corrected FSC "
        "0.143 of the 64-px half maps; B -312 Å², volume_sharpened.mrc), "
        "protein dark (auto, z 143); WARNING: the map is not reliable (the halves shared one map until the "
        "switch, so the resolution is optimistic; the final half maps agree only to 5.2 cycles per box "
        "(FSC 0.143); 31 % of the particles fit a mate of their pose as well); symmetry: C1 (no point group "
        f"found above chance); 24 junk left out; 64-px map; results in {out}"
    )
    dock._config, dock.worker = SimpleNamespace(out=str(out), epochs=6), object()
    dock._on_snapshot(Snapshot(5, 90, Stage.DONE, 1.0, 300.0, 0.0, 0.8, 2.0, resolution=8.1, message=message))
    dock._on_finished()
    frame.raise_()
    QApplication.processEvents()
    pop_up = NapariQtNotification(shown[0], "warning")  # napari's pop-up: 400 px wide, one elided line
    qtbot.addWidget(pop_up)
    pop_up.show()
    QApplication.processEvents()
    assert QLabel.text(pop_up.message) == shown[0] == "cryoSPIN: map NOT reliable (see dock)"
    screen = window.screen().availableGeometry()
    label = dock.verdict.label
    assert dock.verdict.isVisible() and "    – the final half maps agree only to 5.2" in label.text()
    assert label.height() >= label.heightForWidth(label.width())  # every line shown
    assert frame.minimumSizeHint().height() <= screen.height() and window.height() <= screen.height()
    assert frame.width() < screen.width() / 3  # the long folder name wraps instead of widening the dock
