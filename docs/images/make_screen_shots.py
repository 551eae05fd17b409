"""Whole-window screenshots at 1920×1080 (under `xvfb-run -a -s "-screen 0 1920x1080x24"`): a particle's
posterior with its heads in auto-encoding, the live run in auto-decoding, the finished run's verdict, then
the run in the Run explorer with a brushed selection; every dock opened from the Plugins menu."""

from __future__ import annotations

import tempfile
from pathlib import Path

import napari
import numpy as np
from make_screenshots import save, wait
from qtpy.QtCore import QThreadPool
from qtpy.QtWidgets import QApplication

from napari_cryospin._napari import _layout
from napari_cryospin.engine.events import Stage

DOCKS = ("cryoSPIN reconstruction", "Pose posterior", "Run plots", "Run explorer")
PARTICLE = 7


def _shoot(viewer, name: str) -> None:
    for _ in range(40):
        QApplication.processEvents()
    save(viewer.screenshot(canvas_only=False, flash=False), name)


def _heads_shown(hub) -> bool:
    last = hub.last
    view = None if last is None else last.particle
    return (
        view is not None
        and last.stage == Stage.ENCODING
        and view.index == PARTICLE
        and view.log_posterior is not None
        and len(view.candidates) > 2
    )


def main() -> None:
    """Simulated sample, 6 epochs: exploring 2, auto-encoding to epoch 4, then auto-decoding."""
    folder = Path(tempfile.mkdtemp(prefix="cryospin-docs-"))
    _layout.layout_file = lambda: folder / "layout.ini"  # nothing floats as this user's docks may
    viewer = napari.Viewer(show=True)
    window = viewer.window._qt_window
    window.setGeometry(window.screen().availableGeometry())
    viewer.open_sample("napari-cryospin", "simulated_particles")
    opened = {name: viewer.window.add_plugin_dock_widget("napari-cryospin", name) for name in DOCKS}
    frames = {name: dock_frame for name, (dock_frame, _) in opened.items()}
    dock, explorer = opened[DOCKS[0]][1], opened[DOCKS[3]][1]
    out = folder / "run"
    dock.settings.inputs["out"].write(str(out))
    dock.settings.inputs["epochs"].write(6)
    dock.settings.inputs["explore_epochs"].write(2)
    dock.settings.inputs["switch"].combo.setCurrentText("at epoch")
    dock.settings.inputs["switch"].epoch.setValue(4)
    opened[DOCKS[1]][1].select_particle(PARTICLE)
    dock.start()
    hub = dock.hub
    frames[DOCKS[1]].raise_()
    wait(lambda: _heads_shown(hub), timeout_s=1200.0)
    viewer.camera.angles = (15.0, 35.0, 80.0)
    _shoot(viewer, "screen_posterior_heads.png")

    frames[DOCKS[0]].raise_()
    wait(lambda: hub.last.stage == Stage.DECODING and hub.last.progress > 0.75, timeout_s=1200.0)
    _shoot(viewer, "screen_live_decoding.png")
    wait(lambda: not dock.running, timeout_s=1800.0)
    _shoot(viewer, "screen_verdict.png")

    frames[DOCKS[3]].raise_()
    explorer.open_folder(out)
    wait(lambda: explorer.model is not None and explorer.results is not None)
    values = explorer.results.table[explorer.column_combo.currentText()].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    explorer.select_range(float(np.percentile(finite, 0)), float(np.percentile(finite, 20)))
    wait(lambda: not explorer._busy)
    _shoot(viewer, "screen_explorer.png")
    QThreadPool.globalInstance().waitForDone(60_000)  # a worker still going as the window closes aborts
    viewer.close()


if __name__ == "__main__":
    main()
