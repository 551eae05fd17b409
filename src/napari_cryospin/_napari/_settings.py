"""The run-settings form of the reconstruction dock: one input per setting RunConfig declares for the dock.

The inputs (``_inputs.py``) are made from the declarations, in field order, in the section each names;
``config()`` turns their values into a `RunConfig`.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QWidget
from superqt import QCollapsible

from ..engine.config import RunConfig, run_settings
from ._inputs import make_input, row_label


class RunSettings(QWidget):
    """Particles (file or open stack layer), output folder, device and the run's numbers.

    ``inputs`` maps each setting declared for the dock to its input widget (``read()``/``write()``).
    """

    out_changed = Signal()

    def __init__(self, viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("An open particle stack (opened with this plugin's reader)")
        self.inputs = {s.name: make_input(s) for s in run_settings() if s.dock is not None}
        self._lay_out()
        self.layer_combo.activated.connect(self._use_layer)
        self.inputs["particles"].changed.connect(self._suggest_out)
        self.inputs["particles"].edit.textChanged.connect(self._name_the_layer)
        self.inputs["out"].edit.textChanged.connect(self.out_changed)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    def _lay_out(self) -> None:
        """The open-stack row, then each input in its section; "Advanced" collapsed at the end."""
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("open stack", self.layer_combo)
        advanced_form = QWidget()
        advanced = QFormLayout(advanced_form)
        advanced.setContentsMargins(0, 0, 0, 0)
        sections = {"main": form, "advanced": advanced}
        for s in run_settings():
            if s.dock is not None:
                widget = self.inputs[s.name]
                sections[s.dock].addRow("" if isinstance(widget, QCheckBox) else row_label(s), widget)
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(advanced_form)
        form.addRow(self.advanced)

    def particle_layers(self) -> list:
        """Open layers that know their particle file (metadata['particles_path'])."""
        return [layer for layer in self.viewer.layers if layer.metadata.get("particles_path")]

    def _refresh_layers(self, _event=None) -> None:
        self.layer_combo.clear()
        self.layer_combo.addItem("— choose a file below —")
        for layer in self.particle_layers():
            self.layer_combo.addItem(layer.name)
        if not self.inputs["particles"].read() and self.layer_combo.count() > 1:
            self.layer_combo.setCurrentIndex(1)
            self._use_layer(1)
        else:
            self._name_the_layer(self.inputs["particles"].read())

    def _name_the_layer(self, path: str) -> None:
        """Show in "open stack" the layer of the particle file now chosen, or none when it is no layer's."""
        names = [
            layer.name
            for layer in self.particle_layers()
            if str(layer.metadata["particles_path"]) == path.strip()
        ]
        index = self.layer_combo.findText(names[0]) if names else 0
        self.layer_combo.setCurrentIndex(max(index, 0))

    def _use_layer(self, index: int) -> None:
        if index <= 0:
            return
        name = self.layer_combo.itemText(index)
        if name in self.viewer.layers:
            self.set_particles(self.viewer.layers[name].metadata["particles_path"])

    def set_particles(self, path: str) -> None:
        """Use the particle file `path`, suggesting an output folder next to it."""
        self.inputs["particles"].write(path)
        self._suggest_out()

    def _suggest_out(self) -> None:
        particles = self.inputs["particles"].read()
        if particles and not self.out_path():
            self.inputs["out"].write(str(Path(particles).parent / "cryospin"))

    def out_path(self) -> str:
        """The output folder as typed (may be empty)."""
        return self.inputs["out"].read()

    def config(self, resume: bool = False) -> RunConfig:
        """The run these settings describe; ValueError names a missing particle file or output folder."""
        values = {name: widget.read() for name, widget in self.inputs.items()}
        if not values["particles"]:
            raise ValueError("No particles chosen. Fix: pick a .star, .cs or .mrcs file, or an open stack.")
        if not Path(values["particles"]).is_file():
            raise ValueError(f"{values['particles']}: file not found. Fix: check the path.")
        if not values["out"]:
            raise ValueError("No output folder. Fix: choose where cryoSPIN should save its results.")
        return RunConfig(**values, resume=resume)
