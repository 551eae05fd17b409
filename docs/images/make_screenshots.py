"""Regenerate the tutorial screenshots from a real run (under `xvfb-run -a` on a machine without display)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

from napari_cryospin._napari._volume import MAP_LAYER, frame
from napari_cryospin.engine.events import Stage

HERE = Path(__file__).parent
MAX_BYTES = 300_000


def wait(condition, timeout_s: float = 600.0) -> None:
    """Keep the GUI running until `condition()` holds."""
    start = time.time()
    while not condition():
        QApplication.processEvents()
        time.sleep(0.05)
        if time.time() - start > timeout_s:
            raise TimeoutError("the run did not reach the state to photograph")


def save(image, name: str) -> None:
    """Save an RGB(A) array or PIL image as an optimised RGB PNG, shrunk until it is under 300 KB."""
    picture = Image.fromarray(np.asarray(image)[..., :3]) if not isinstance(image, Image.Image) else image
    picture = picture.convert("RGB")
    picture.save(HERE / name, optimize=True)
    while (HERE / name).stat().st_size > MAX_BYTES:
        picture = picture.resize((picture.width * 4 // 5, picture.height * 4 // 5), Image.Resampling.LANCZOS)
        picture.save(HERE / name, optimize=True)


def grab(widget) -> Image.Image:
    """A Qt widget as a PIL image."""
    path = Path(tempfile.mkstemp(suffix=".png")[1])
    widget.grab().save(str(path))
    return Image.open(path)


def main() -> None:
    """Run 400 simulated particles with 7 heads and photograph encoding, decoding and the plots."""
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-cryospin", "simulated_particles")
    _, dock = viewer.window.add_plugin_dock_widget("napari-cryospin", "cryoSPIN reconstruction")
    posterior_dock, posterior = viewer.window.add_plugin_dock_widget("napari-cryospin", "Pose posterior")
    plots_dock, plots = viewer.window.add_plugin_dock_widget("napari-cryospin", "Run plots")
    viewer.window._qt_window.tabifyDockWidget(posterior_dock, plots_dock)
    posterior_dock.raise_()
    wait(lambda: posterior.isVisible(), 30.0)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    save(viewer.screenshot(canvas_only=False, flash=False), "particles_opened.png")

    dock.settings.inputs["out"].write(tempfile.mkdtemp(prefix="cryospin-docs-"))
    dock.settings.inputs["epochs"].write(8)
    dock.settings.inputs["switch"].combo.setCurrentText("at epoch")
    dock.settings.inputs["switch"].epoch.setValue(4)
    posterior.select_particle(17)
    dock.start()
    hub = dock.hub
    wait(lambda: hub.last is not None and hub.last.epoch >= 3 and posterior.view is not None)
    posterior.centre_on_winner()
    QApplication.processEvents()
    save(grab(posterior), "posterior_encoding.png")
    wait(lambda: hub.last.stage == Stage.DECODING and hub.last.epoch >= 6)
    posterior.select_particle(18)
    posterior.select_particle(17)
    wait(lambda: posterior.stage == Stage.DECODING and len(posterior.view.path) > 3)
    posterior.centre_on_winner()
    QApplication.processEvents()
    save(grab(posterior), "posterior_decoding.png")
    wait(lambda: not dock.running, timeout_s=900.0)
    viewer.layers.selection.active = viewer.layers[MAP_LAYER]
    frame(viewer, viewer.layers[MAP_LAYER])
    viewer.camera.angles = (15.0, 35.0, 80.0)
    QApplication.processEvents()
    save(viewer.screenshot(canvas_only=False, flash=False), "reconstruction_window.png")
    save(grab(plots), "run_plots.png")
    viewer.close()


if __name__ == "__main__":
    main()
