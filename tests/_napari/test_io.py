"""Readers, writer and sample data through napari's plugin machinery; what importing the plugin costs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cryospin._napari._lazy import LazyStack
from napari_cryospin._napari._reader import get_particles_reader, get_stack_reader, get_volume_reader
from napari_cryospin._napari._sample_data import bundled_map
from napari_cryospin.data.mrc import read_volume, write_volume
from napari_cryospin.data.particles import load_particles


def test_map_round_trips_with_its_voxel_size(ui_viewer, tmp_path):
    volume = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    write_volume(tmp_path / "in.mrc", volume, 1.7)
    (layer,) = ui_viewer.open(tmp_path / "in.mrc", plugin="napari-cryospin")
    assert layer.ndim == 3 and layer.rendering == "mip"
    np.testing.assert_allclose(layer.scale, 1.7, rtol=1e-6)
    layer.scale = (2.25, 2.25, 2.25)
    (written,) = layer.save(str(tmp_path / "out.mrc"), plugin="napari-cryospin")
    data, voxel = read_volume(written)
    np.testing.assert_array_equal(data, volume)
    assert voxel == pytest.approx(2.25)


def test_stack_reader_memory_maps_the_stack(ui_viewer, io_write_stack):
    path, data = io_write_stack(name="parts.mrcs", n=6, box=16, pixel_size=2.0)
    (layer,) = ui_viewer.open(path, plugin="napari-cryospin")
    assert isinstance(layer.data, np.memmap)
    assert layer.ndim == 3 and layer.metadata["particles_path"] == str(path)
    np.testing.assert_array_equal(layer.data[4], data[4])


def test_star_reader_shows_the_stack_with_its_table(ui_viewer, ui_tiny_particles):
    (layer,) = ui_viewer.open(ui_tiny_particles, plugin="napari-cryospin")
    particles = load_particles(ui_tiny_particles)
    assert layer.metadata["particles_path"] == str(ui_tiny_particles)
    assert len(layer.metadata["table"]) == len(particles) == layer.data.shape[0]
    np.testing.assert_allclose(layer.scale[1:], particles.pixel_size)
    np.testing.assert_array_equal(layer.data[7], particles.stack[7][0])


def test_lazy_stack_indexes_like_an_array(ui_tiny_particles):
    stack = load_particles(ui_tiny_particles).stack
    lazy, whole = LazyStack(stack), stack[:]
    for key in (3, slice(2, 9, 3), (5, slice(4, 10)), (slice(None), 1, 2), (Ellipsis, 3)):
        np.testing.assert_array_equal(lazy[key], whole[key])
    np.testing.assert_array_equal(np.asarray(lazy), whole)


def test_readers_decline_other_files():
    assert get_volume_reader("x.star") is None and get_stack_reader("x.mrc") is None
    assert get_particles_reader(["a.star", "b.star"]) is None
    assert get_particles_reader("a.cs") is not None and get_volume_reader("a.map") is not None


def test_a_run_folder_with_damaged_files_opens_and_names_each(finished_run, tmp_path):
    """File → Open Folder (npe2's reader): wrong-shape metrics.json, an unreadable epochs/*.npz and a
    garbage run.json each give one warning; the map and half maps still open."""
    import shutil
    import warnings

    import npe2

    folder = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (folder / "metrics.json").write_text(json.dumps({"epochs": [1, 2], "final": []}))
    last_epoch = sorted((folder / "epochs").glob("epoch_*.npz"))[-1]
    last_epoch.write_bytes(b"not a zip file")
    (folder / "run.json").write_bytes(b"\x00garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = npe2.read([str(folder)], stack=False, plugin_name="napari-cryospin")
    names = [meta["name"] for _, meta, _ in layers]
    assert names[0] == "run map" and {"run half A", "run half B"} <= set(names)
    lines = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert [line.split(" ", 1)[0] for line in lines] == [
        "metrics.json",
        f"epochs/{last_epoch.name}",
        "run.json",
    ]
    assert lines[0].endswith(": shown without metrics") and "the run is shown as unfinished" in lines[2]


def test_bundled_map_sample_is_a_scaled_volume():
    ((data, meta, kind),) = bundled_map()
    assert kind == "image" and data.shape == (64, 64, 64)
    assert meta["scale"][0] > 1.0 and meta["contrast_limits"][1] > meta["contrast_limits"][0]


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-cryospin")
    manifest.validate_imports()
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "cryoSPIN reconstruction",
        "Pose posterior",
        "Run plots",
        "Run explorer",
    }


def test_plugin_import_pulls_in_neither_torch_nor_qt():
    code = (
        "import sys, napari_cryospin, napari_cryospin._napari._reader, napari_cryospin._napari._writer, "
        "napari_cryospin._napari._sample_data; "
        "print(sorted(m for m in ('torch', 'qtpy', 'PyQt6', 'napari') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


DOCK_OPENS = """
import importlib.abc, json, sys, threading, time
imported_on = []

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            imported_on.append(threading.current_thread().name)

sys.meta_path.insert(0, Watch())
from qtpy.QtWidgets import QApplication
app = QApplication(sys.argv)
from napari.components import ViewerModel
from napari_cryospin._napari._dock import ReconstructionDock
dock = ReconstructionDock(ViewerModel())
combo = dock.settings.inputs["device"]
deadline = time.monotonic() + 120
while not combo.toolTip().startswith("Detected") and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
import torch
print(json.dumps({"threads": imported_on, "tip": combo.toolTip(),
                  "sum": float(torch.ones(3).sum())}))
"""


def test_opening_the_dock_keeps_torch_off_the_gui_thread():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(
        [sys.executable, "-c", DOCK_OPENS], capture_output=True, text=True, check=True, env=env
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["threads"] == ["cryospin-devices"]  # imported once, by the detection thread, not the GUI
    assert report["tip"].startswith("Detected: ") and report["tip"].endswith("cpu")
    assert report["sum"] == 3.0  # torch works beside the QApplication
