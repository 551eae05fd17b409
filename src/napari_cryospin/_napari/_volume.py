"""The live map layer: created once in 3D, then updated in place so napari never rebuilds it."""

from __future__ import annotations

import numpy as np
from napari.layers import Image

from ._map_display import slice_layer_name
from ._reader import volume_contrast

MAP_LAYER = "cryoSPIN map"
RUN_MAP = "run map"
"""The layer of the run opened in the Run explorer (its half maps: ``run half A`` / ``run half B``)."""
ANGSTROM = "angstrom"


def show_volume(viewer, volume: np.ndarray, voxel_size: float, name: str = MAP_LAYER) -> Image:
    """Put `volume` (Å voxels) in the layer `name`, keeping contrast the user chose by hand.

    The first time, the view turns 3D, particle-stack layers are hidden and the scale bar (Å) shows."""
    limits = volume_contrast(volume)
    scale = (float(voxel_size),) * 3
    if name in viewer.layers:
        layer = viewer.layers[name]
        user_set = layer.metadata.get("auto_contrast") != tuple(layer.contrast_limits)
        layer.data = volume
        if tuple(layer.scale) != scale:
            layer.scale = scale
        if not user_set:
            layer.contrast_limits_range = (min(limits[0], float(volume.min())), limits[1])
            layer.contrast_limits = limits
            layer.metadata["auto_contrast"] = tuple(layer.contrast_limits)
        return layer
    layer = viewer.add_image(
        volume,
        name=name,
        scale=scale,
        rendering="mip",
        colormap="gray",
        contrast_limits=limits,
        metadata={"voxel_size": float(voxel_size)},
        units=ANGSTROM,
    )
    viewer.scale_bar.visible = True  # its unit is the layers' (Å)
    layer.metadata["auto_contrast"] = tuple(layer.contrast_limits)
    for other in viewer.layers:
        if other.metadata.get("particles_path"):
            other.visible = False  # a particle stack shown in 3D is a slab that hides the map
    if viewer.dims.ndisplay != 3:
        viewer.dims.ndisplay = 3
    frame(viewer, layer)
    return layer


def hide_map(viewer, name: str) -> list:
    """Hide the map layer ``name`` and its slice layers; returns those that were shown (to show again)."""
    names = {name} | {slice_layer_name(name, axis) for axis in "zyx"}
    shown = [layer for layer in viewer.layers if layer.name in names and layer.visible]
    for layer in shown:
        layer.visible = False
    return shown


def frame(viewer, layer: Image) -> None:
    """Centre the camera on `layer` and zoom to it, whatever else (e.g. a long stack) the viewer holds."""
    viewer.reset_view()
    world = np.asarray(viewer.layers.extent.world)
    own = np.asarray(layer.extent.world)
    shown = list(viewer.dims.displayed)
    spans = (world[1] - world[0])[shown].max(), (own[1] - own[0])[shown].max()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari ≥ 0.9 : older
    camera.center = tuple(((own[0] + own[1]) / 2)[shown])
    if spans[1] > 0:
        camera.zoom = camera.zoom * spans[0] / spans[1]
