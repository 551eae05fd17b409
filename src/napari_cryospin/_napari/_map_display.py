"""How a map layer is drawn in 3D: maximum-intensity projection, iso-surface at a level, or three slices.

A magicgui form drives it; the iso level is a labelled slider (superqt, through magicgui) whose updates
are throttled, and it starts at a level read from the map. The choice survives map updates; the level
follows the map's own default as it updates until the user moves the slider.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSlider
from superqt.utils import qthrottled

RENDERINGS = ("MIP", "iso-surface", "slices")
SLICE_AXES = ("z", "y", "x")
LEVEL_SIGMAS = 3.0


def default_iso_level(volume: np.ndarray) -> float:
    """An iso level from the map itself: 3 standard deviations above its mean (map viewers' σ level),
    kept between the median and the 99.9th percentile. Robust to masked maps, whose solvent is flat."""
    volume = np.asarray(volume, dtype=np.float32)
    level = float(volume.mean() + LEVEL_SIGMAS * volume.std())
    low, high = np.percentile(volume, [50.0, 99.9])
    return float(np.clip(level, low, high))


def slice_layer_name(map_name: str, axis: str) -> str:
    """Name of the plane layer showing ``map_name``'s central slice normal to ``axis``."""
    return f"{map_name} ({axis} slice)"


class MapDisplay(Container):
    """Rendering form for the map layer ``layer_name`` of ``viewer`` (applies when the layer exists)."""

    def __init__(self, viewer, layer_name: str) -> None:
        self.viewer, self.layer_name = viewer, layer_name
        self.rendering = ComboBox(label="rendering", choices=RENDERINGS, value="MIP")
        self.iso_level = FloatSlider(label="iso level", min=0.0, max=1.0, value=0.5, step=0.001)
        super().__init__(widgets=[self.rendering, self.iso_level], labels=True)
        self.iso_level.visible = False
        self._watched = None
        self._auto_level: float | None = None  # the default last set (None once the user chose a level)
        self._mode = self.rendering.value  # for the throttled level, which may fire after Qt deleted the form
        self.rendering.changed.connect(self.apply)
        self._throttled_level = qthrottled(self._set_level, 100)  # held: the signal keeps a weak reference
        self.iso_level.changed.connect(self._throttled_level)
        viewer.layers.events.inserted.connect(self._on_inserted)
        if layer_name in viewer.layers:
            self._adopt(viewer.layers[layer_name])

    @property
    def layer(self):
        """The map layer, or None before it exists."""
        return self.viewer.layers[self.layer_name] if self.layer_name in self.viewer.layers else None  # noqa: SIM401 (LayerList has no get)

    def _on_inserted(self, event) -> None:
        if event.value.name == self.layer_name:
            self._adopt(event.value)

    def _adopt(self, layer) -> None:
        """Take a new map layer: iso range and default level from its data, and follow its updates."""
        if self._watched is not layer:
            layer.events.data.connect(self._on_data)
            self._watched = layer
        data = np.asarray(layer.data)
        self.iso_level.min, self.iso_level.max = float(data.min()), float(data.max())
        self._set_default(data)
        self.apply()

    def _set_default(self, data: np.ndarray) -> None:
        self.iso_level.value = default_iso_level(data)
        self._auto_level = self.iso_level.value  # as the slider rounds it

    def _on_data(self, _event=None) -> None:
        layer = self.layer
        if layer is None:
            return
        data = np.asarray(layer.data)
        self.iso_level.min = min(self.iso_level.min, float(data.min()))
        self.iso_level.max = max(self.iso_level.max, float(data.max()))
        if self._auto_level is not None and self.iso_level.value == self._auto_level:
            self._set_default(data)
        else:
            self._auto_level = None
        for axis in SLICE_AXES:
            name = slice_layer_name(self.layer_name, axis)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = layer.data

    def _set_level(self, value: float) -> None:
        layer = self.layer
        if layer is not None and self._mode == "iso-surface":
            layer.iso_threshold = float(value)

    def apply(self, _value=None) -> None:
        """Draw the map the chosen way (slices: three plane layers through the centre of the box)."""
        layer = self.layer
        mode = self._mode = self.rendering.value
        self.iso_level.visible = mode == "iso-surface"
        if layer is None:
            return
        layer.visible = mode != "slices"
        if mode == "iso-surface":
            layer.rendering = "iso"
            layer.iso_threshold = float(self.iso_level.value)
        else:
            layer.rendering = "mip"
        self._show_slices(layer, mode == "slices")

    def _show_slices(self, layer, show: bool) -> None:
        centre = tuple(s // 2 for s in layer.data.shape)
        for k, axis in enumerate(SLICE_AXES):
            name = slice_layer_name(self.layer_name, axis)
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = show
                continue
            if not show:
                continue
            normal = tuple(float(i == k) for i in range(3))
            self.viewer.add_image(
                layer.data,
                name=name,
                scale=layer.scale,
                colormap="gray",
                contrast_limits=(float(np.min(layer.data)), float(np.max(layer.data))),
                depiction="plane",
                plane={"position": centre, "normal": normal},
                blending="translucent",
            )
