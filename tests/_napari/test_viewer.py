"""Real napari Viewers (OpenGL: run under xvfb-run): docks from the manifest, the 3D map renders."""

import os

import pytest

pytestmark = [
    pytest.mark.viewer,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run"),
]

WIDGETS = ("cryoSPIN reconstruction", "Pose posterior", "Run plots")


def test_every_manifest_dock_opens_in_the_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in WIDGETS:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-cryospin", name)
        assert widget.isVisible() or dock is not None
    assert {type(w).__name__ for w in viewer.window.dock_widgets.values()} >= {
        "ReconstructionDock",
        "PosteriorView",
        "RunPlots",
    }


def test_bundled_map_renders_in_3d(make_napari_viewer):
    viewer = make_napari_viewer(show=True)  # an unshown canvas renders blank under Xvfb
    (layer,) = viewer.open_sample("napari-cryospin", "ace2_rbd_map")
    viewer.dims.ndisplay = 3
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert layer.rendering == "mip"
    assert shot[..., :3].std() > 5.0
