"""The run-settings form of the reconstruction dock, turned into a `RunConfig` (whose defaults it shows).

The devices are detected once per process in a background thread: that imports torch, which must not
happen on the GUI thread when the dock opens. The thread touches no Qt object (a widget may be deleted
while it runs); the form polls its result with a timer of its own.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from ..engine.config import MIN_BOX, RunConfig, config_defaults

PARTICLE_FILTER = "Particles (*.star *.cs *.mrcs *.mrc)"
SWITCH_MODES = ("auto", "at epoch", "manual")
_DEVICES: Future | None = None


def detected_devices() -> Future:
    """The devices this machine offers (best first), detected once in a background thread."""
    global _DEVICES
    if _DEVICES is None:
        _DEVICES = Future()

        def detect(result: Future) -> None:
            try:
                from ..engine.device import available_devices

                result.set_result(available_devices())
            except Exception as exc:  # shown as a tooltip; the run itself reports device errors
                result.set_exception(exc)

        threading.Thread(target=detect, args=(_DEVICES,), name="cryospin-devices", daemon=True).start()
    return _DEVICES


def _spin(low: int, high: int, value: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def _with_button(edit: QLineEdit, button: QPushButton) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row


class RunSettings(QWidget):
    """Particles (file or open stack layer), output folder, device and the run's numbers."""

    out_changed = Signal()

    def __init__(self, viewer) -> None:
        super().__init__()
        self.viewer = viewer
        defaults = config_defaults()
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("An open particle stack (opened with this plugin's reader)")
        self.particles_edit = QLineEdit()
        self.particles_edit.setPlaceholderText("RELION .star, cryoSPARC .cs or .mrcs stack")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("folder for volume.mrc, poses.star, checkpoint.pt, …")
        browse_particles, browse_out = QPushButton("Browse…"), QPushButton("Browse…")
        browse_particles.clicked.connect(self._browse_particles)
        browse_out.clicked.connect(self._browse_out)
        self.device_combo = QComboBox()
        self.device_combo.addItem("auto", "auto")
        self.device_combo.addItem("cpu", "cpu")
        self.device_combo.setToolTip("Detecting devices…")
        self._devices = detected_devices()
        self._device_poll = QTimer(self, interval=100)
        self._device_poll.timeout.connect(self._poll_devices)
        self._device_poll.start()
        self.heads_spin = _spin(1, 64, defaults["heads"])
        self.heads_spin.setToolTip("Encoder heads: pose candidates per particle in auto-encoding")
        self.epochs_spin = _spin(1, 10_000, defaults["epochs"])
        self.explore_spin = _spin(0, 10_000, defaults["explore_epochs"])
        self.explore_spin.setToolTip(
            "Epochs of global pose search that give the map its first shape (0: start from a blob)"
        )
        self.switch_combo = QComboBox()
        self.switch_combo.addItems(SWITCH_MODES)
        self.switch_combo.setToolTip(
            "When to leave auto-encoding: automatically, at a given epoch, or only with the button"
        )
        self.switch_epoch_spin = _spin(0, 10_000, max(1, defaults["epochs"] // 2))
        self.switch_combo.currentTextChanged.connect(
            lambda mode: self.switch_epoch_spin.setEnabled(mode == "at epoch")
        )
        self.switch_epoch_spin.setEnabled(False)

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("open stack", self.layer_combo)
        form.addRow("particles", _with_button(self.particles_edit, browse_particles))
        form.addRow("output folder", _with_button(self.out_edit, browse_out))
        form.addRow("device", self.device_combo)
        form.addRow("heads", self.heads_spin)
        form.addRow("epochs", self.epochs_spin)
        form.addRow("exploration epochs", self.explore_spin)
        switch_row = QHBoxLayout()
        switch_row.addWidget(self.switch_combo, 1)
        switch_row.addWidget(self.switch_epoch_spin)
        form.addRow("switch", switch_row)
        self.advanced = self._advanced_section(defaults)
        form.addRow(self.advanced)

        self.layer_combo.activated.connect(self._use_layer)
        self.particles_edit.textChanged.connect(self._name_the_layer)
        self.particles_edit.editingFinished.connect(self._suggest_out)
        self.out_edit.textChanged.connect(self.out_changed)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    def _advanced_section(self, defaults: dict) -> QCollapsible:
        """The collapsed "Advanced" rows: box, batch size, polarity, junk, noise model, half maps."""
        self.box_spin = _spin(MIN_BOX - 2, 1024, MIN_BOX - 2, step=2)
        self.box_spin.setSpecialValueText("auto")  # shown at the minimum, one step below MIN_BOX
        self.box_spin.setToolTip(
            "Work on the images downsampled to this box (even); auto: the stack's box up to 64 on a CPU, "
            "128 on a GPU. The final maps are also made at the stack's own box and pixel size"
        )
        self.batch_spin = _spin(1, 4096, defaults["batch_size"])
        self.polarity_combo = QComboBox()
        for label, value in (
            ("auto (from the data)", "auto"),
            ("dark protein", "dark"),
            ("white protein", "white"),
        ):
            self.polarity_combo.addItem(label, value)
        self.polarity_combo.setToolTip(
            "Protein darker (micrographs) or brighter (RELION extraction) than background; auto decides"
        )
        self.junk_combo = QComboBox()
        for label, value in (("leave out of the map (auto)", "auto"), ("keep every particle", "keep")):
            self.junk_combo.addItem(label, value)
        self.junk_combo.setCurrentIndex(self.junk_combo.findData(defaults["junk"]))
        self.junk_combo.setToolTip(
            "Particles the map does not explain (empty picks, ice, aggregates) are scored in poses.star; "
            "auto leaves them out of the final maps and lists the kept ones in particles_kept.star"
        )
        self.noise_combo = QComboBox()
        for label, value in (("measured per shell (auto)", "auto"), ("white", "white")):
            self.noise_combo.addItem(label, value)
        self.noise_combo.setCurrentIndex(self.noise_combo.findData(defaults["noise_model"]))
        self.noise_combo.setToolTip(
            "auto: weigh each frequency by the noise power measured in the images' background, per optics "
            "group; white: every frequency alike"
        )
        self.half_maps_check = QCheckBox("reconstruct half maps (gold-standard FSC)")
        self.half_maps_check.setChecked(defaults["half_maps"])
        advanced_form = QWidget()
        advanced = QFormLayout(advanced_form)
        advanced.setContentsMargins(0, 0, 0, 0)
        advanced.addRow("box", self.box_spin)
        advanced.addRow("batch size", self.batch_spin)
        advanced.addRow("polarity", self.polarity_combo)
        advanced.addRow("junk", self.junk_combo)
        advanced.addRow("noise model", self.noise_combo)
        advanced.addRow("", self.half_maps_check)
        section = QCollapsible("Advanced")
        section.addWidget(advanced_form)
        return section

    def _poll_devices(self) -> None:
        if not self._devices.done():
            return
        self._device_poll.stop()
        if self._devices.exception() is not None:
            self.device_combo.setToolTip(f"Device detection failed: {self._devices.exception()}")
        else:
            self._show_devices(self._devices.result())

    def _show_devices(self, found: list[str]) -> None:
        """Offer the detected devices (best first) and name the one 'auto' picks."""
        self.device_combo.setItemText(0, f"auto ({found[0]})")
        for name in found:
            if self.device_combo.findData(name) < 0:
                self.device_combo.insertItem(self.device_combo.count() - 1, name, name)
        self.device_combo.setToolTip(f"Detected: {', '.join(found)}")

    def particle_layers(self) -> list:
        """Open layers that know their particle file (metadata['particles_path'])."""
        return [layer for layer in self.viewer.layers if layer.metadata.get("particles_path")]

    def _refresh_layers(self, _event=None) -> None:
        self.layer_combo.clear()
        self.layer_combo.addItem("— choose a file below —")
        for layer in self.particle_layers():
            self.layer_combo.addItem(layer.name)
        if not self.particles_edit.text() and self.layer_combo.count() > 1:
            self._use_layer(1)
        else:
            self._name_the_layer(self.particles_edit.text())

    def _use_layer(self, index: int) -> None:
        if index <= 0:
            return
        name = self.layer_combo.itemText(index)
        if name in self.viewer.layers:
            self.set_particles(self.viewer.layers[name].metadata["particles_path"])

    def _name_the_layer(self, path: str) -> None:
        """Show in "open stack" the layer of the particle file now chosen, or none when it is no layer's."""
        layers = self.particle_layers()
        names = [layer.name for layer in layers if str(layer.metadata["particles_path"]) == path.strip()]
        index = self.layer_combo.findText(names[0]) if names else 0
        self.layer_combo.setCurrentIndex(max(index, 0))

    def set_particles(self, path: str) -> None:
        """Use the particle file `path`, suggesting an output folder next to it."""
        self.particles_edit.setText(str(path))
        self._suggest_out()

    def _suggest_out(self) -> None:
        particles = self.particles_edit.text().strip()
        if particles and not self.out_edit.text().strip():
            self.out_edit.setText(str(Path(particles).parent / "cryospin"))

    def _browse_particles(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Particles", self.particles_edit.text(), PARTICLE_FILTER)
        if path:
            self.set_particles(path)

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", self.out_edit.text())
        if path:
            self.out_edit.setText(path)

    def out_path(self) -> str:
        """The output folder as typed (may be empty)."""
        return self.out_edit.text().strip()

    def switch_value(self) -> int | str | None:
        """`RunConfig.switch` for the chosen mode."""
        mode = self.switch_combo.currentText()
        if mode == "at epoch":
            return self.switch_epoch_spin.value()
        return "auto" if mode == "auto" else None

    def config(self, resume: bool = False) -> RunConfig:
        """The run these settings describe; ValueError names a missing particle file or output folder."""
        particles, out = self.particles_edit.text().strip(), self.out_path()
        if not particles:
            raise ValueError("No particles chosen. Fix: pick a .star, .cs or .mrcs file, or an open stack.")
        if not Path(particles).is_file():
            raise ValueError(f"{particles}: file not found. Fix: check the path.")
        if not out:
            raise ValueError("No output folder. Fix: choose where cryoSPIN should save its results.")
        return RunConfig(
            particles=particles,
            out=out,
            heads=self.heads_spin.value(),
            epochs=self.epochs_spin.value(),
            explore_epochs=self.explore_spin.value(),
            switch=self.switch_value(),
            device=self.device_combo.currentData(),
            box=self.box_spin.value() if self.box_spin.value() >= MIN_BOX else None,
            batch_size=self.batch_spin.value(),
            half_maps=self.half_maps_check.isChecked(),
            resume=resume,
            polarity=self.polarity_combo.currentData(),
            junk=self.junk_combo.currentData(),
            noise_model=self.noise_combo.currentData(),
        )
