"""Whole-window screenshots at 1920×1080 (under `xvfb-run -a -s "-screen 0 1920x1080x24"`): a live run in
auto-decoding, then the finished run in the Run explorer, every dock opened from the Plugins menu."""

from __future__ import annotations

import tempfile

import napari
import numpy as np
from make_screenshots import save, wait
from qtpy.QtWidgets import QApplication

from napari_cryospin.engine.events import Stage

DOCKS = ("cryoSPIN reconstruction", "Pose posterior", "Run plots", "Run explorer")


def main() -> None:
    """Simulated sample, 6 epochs (auto-decoding from epoch 4), photographed live and in the explorer."""
    viewer = napari.Viewer(show=True)
    window = viewer.window._qt_window
    window.setGeometry(window.screen().availableGeometry())
    viewer.open_sample("napari-cryospin", "simulated_particles")
    opened = {name: viewer.window.add_plugin_dock_widget("napari-cryospin", name) for name in DOCKS}
    (dock_frame, dock), (_, explorer) = opened[DOCKS[0]], opened[DOCKS[3]]
    out = tempfile.mkdtemp(prefix="cryospin-docs-")
    dock.settings.out_edit.setText(out)
    dock.settings.epochs_spin.setValue(6)
    dock.settings.switch_combo.setCurrentText("at epoch")
    dock.settings.switch_epoch_spin.setValue(3)
    dock.start()
    dock_frame.raise_()
    hub = dock.hub
    wait(lambda: hub.last is not None and hub.last.stage == Stage.DECODING and hub.last.progress > 0.75)
    viewer.camera.angles = (15.0, 35.0, 80.0)
    QApplication.processEvents()
    save(viewer.screenshot(canvas_only=False, flash=False), "screen_live_decoding.png")
    wait(lambda: not dock.running, timeout_s=900.0)

    opened[DOCKS[3]][0].raise_()
    explorer.open_folder(out)
    wait(lambda: explorer.model is not None and explorer.results is not None)
    values = explorer.results.table[explorer.column_combo.currentText()].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    explorer.select_range(float(np.percentile(finite, 0)), float(np.percentile(finite, 20)))
    for _ in range(40):
        QApplication.processEvents()
    save(viewer.screenshot(canvas_only=False, flash=False), "screen_explorer.png")
    wait(lambda: not explorer._busy)  # a posterior worker still going when the window closes aborts Python
    viewer.close()


if __name__ == "__main__":
    main()
