"""A run folder with local_resolution.mrc opens with its map's iso-surface coloured by local resolution."""

import numpy as np

from napari_cryospin._napari._local_resolution import local_resolution_surface
from napari_cryospin._napari._reader import read_run_layers
from napari_cryospin.data.mrc import write_volume
from napari_cryospin.metrics.fsc import soft_mask


def test_each_vertex_carries_the_local_resolution_where_it_lies():
    volume = soft_mask(32, 8, 4)  # a ball: its 0.5 surface is the sphere of radius 10 voxels
    local = np.broadcast_to(np.linspace(3.0, 9.0, 32, dtype=np.float32)[None, None, :], (32, 32, 32))
    verts, faces, values = local_resolution_surface(volume, np.ascontiguousarray(local), 0.5)
    radius = np.linalg.norm(verts - 16, axis=1)
    assert faces.shape[1] == 3 and np.abs(radius - 10).max() < 0.6
    assert np.allclose(values, 3.0 + 6.0 * verts[:, 2] / 31, atol=1e-3)  # linear along x


def test_run_folder_reader_adds_the_coloured_surface(tmp_path):
    k = np.arange(32) - 16
    volume = np.exp(-(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) / 72.0)
    write_volume(tmp_path / "volume.mrc", volume.astype(np.float32), 2.0)
    layers = read_run_layers(tmp_path)
    assert [meta["name"] for _, meta, _ in layers] == ["run map"]  # no local_resolution.mrc: no surface
    write_volume(tmp_path / "local_resolution.mrc", np.full((32, 32, 32), 5.0, np.float32), 2.0)
    layers = read_run_layers(tmp_path)
    (_verts, faces, values), meta, kind = layers[1]
    assert kind == "surface" and meta["name"] == "run map, local resolution (Å)"
    assert meta["scale"] == (2.0, 2.0, 2.0) and np.allclose(values, 5.0) and len(faces) > 100
