"""Real napari Viewers (OpenGL: run under xvfb-run): docks from the manifest, the 3D map renders."""

import os

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
    settings.out_edit.setText(str(out))
    settings.heads_spin.setValue(2)
    settings.explore_spin.setValue(0)
    settings.device_combo.setCurrentIndex(settings.device_combo.findData("cpu"))
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
