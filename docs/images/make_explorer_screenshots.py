"""Photograph the Run explorer on a finished run folder (under `xvfb-run -a` on a machine without display).

python docs/images/make_explorer_screenshots.py RUN_FOLDER [PARTICLE]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from make_screenshots import grab, save, wait
from qtpy.QtWidgets import QApplication

from napari_cryospin._napari._explorer import RUN_MAP
from napari_cryospin._napari._volume import frame


def settle(seconds: float = 1.0) -> None:
    """Let Qt paint for a moment."""
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.05)


def main() -> None:
    """Open the run, show a particle's posterior, brush the confidence histogram, and photograph."""
    folder = Path(sys.argv[1])
    particle = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    _, explorer = viewer.window.add_plugin_dock_widget("napari-cryospin", "Run explorer")
    posterior_dock, posterior = viewer.window.add_plugin_dock_widget("napari-cryospin", "Pose posterior")
    plots_dock, _ = viewer.window.add_plugin_dock_widget("napari-cryospin", "Run plots")
    viewer.window._qt_window.tabifyDockWidget(posterior_dock, plots_dock)
    posterior_dock.raise_()
    started = time.perf_counter()
    explorer.open_folder(folder)
    wait(lambda: RUN_MAP in viewer.layers, 120.0)
    map_s = time.perf_counter() - started
    wait(lambda: posterior.view is not None, 300.0)
    first_s = time.perf_counter() - started
    print(f"map shown after {map_s:.1f} s, first posterior after {first_s:.1f} s")
    explorer.map_display.rendering.value = "iso-surface"
    explorer.choose_particle(particle)
    wait(lambda: posterior.view is not None and posterior.view.index == particle, 300.0)
    posterior.centre_on_winner()
    column = "confidence" if "confidence" in explorer.table_model.frame else explorer.column_combo.itemText(0)
    explorer.column_combo.setCurrentText(column)
    values = explorer.table_model.frame[column].to_numpy(dtype=float)
    explorer.select_range(float(np.nanmin(values)), float(np.nanquantile(values, 0.2)))
    frame(viewer, viewer.layers[RUN_MAP])
    viewer.camera.angles = (15.0, 35.0, 80.0)
    settle(2.0)
    save(viewer.screenshot(canvas_only=False, flash=False), "run_explorer.png")
    save(grab(posterior), "posterior_saved_run.png")
    viewer.close()


if __name__ == "__main__":
    main()
