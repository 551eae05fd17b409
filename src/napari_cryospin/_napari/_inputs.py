"""The dock's input widgets, one per run setting declared for the dock: each reads and writes its value.

The devices are detected once per process in a background thread: that imports torch, which must not
happen on the GUI thread when the dock opens. The thread touches no Qt object (a widget may be deleted
while it runs); the device box polls its result with a timer of its own.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..engine.config import config_defaults
from ..engine.setting import Setting, described

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


def row_label(s: Setting) -> str:
    """The dock's label of a setting: the declared one, else its name spaced."""
    return s.label or s.name.replace("_", " ")


class IntInput(QSpinBox):
    """An integer setting (a box steps by 2); an optional one shows "auto" one step below its minimum."""

    def __init__(self, s: Setting) -> None:
        super().__init__()
        step = 2 if s.even else 1
        self.optional = s.default is None
        self.setRange(s.low - step if self.optional else s.low, s.most)
        self.setSingleStep(step)
        if self.optional:
            self.setSpecialValueText("auto")
        self.write(s.default)

    def read(self) -> int | None:
        """The setting's value (None for "auto")."""
        value = self.value()
        return None if self.optional and value == self.minimum() else value

    def write(self, value: int | None) -> None:
        """Show ``value`` (None: "auto")."""
        self.setValue(self.minimum() if value is None else value)


class ChoiceInput(QComboBox):
    """One of the setting's declared choices, each under its dock label."""

    def __init__(self, s: Setting) -> None:
        super().__init__()
        for value, label in s.choices.items():
            self.addItem(label, value)
        self.write(s.default)

    def read(self) -> str:
        """The chosen value."""
        return self.currentData()

    def write(self, value: str) -> None:
        """Choose ``value``."""
        self.setCurrentIndex(self.findData(value))


class BoolInput(QCheckBox):
    """A yes/no setting, its label on the box itself."""

    def __init__(self, s: Setting) -> None:
        super().__init__(row_label(s))
        self.write(s.default)

    def read(self) -> bool:
        """Whether the box is ticked."""
        return self.isChecked()

    def write(self, value: bool) -> None:
        """Tick the box for True."""
        self.setChecked(value)


class PathInput(QWidget):
    """A path typed or browsed for: a particle file, or a folder; ``changed`` when typed or picked."""

    changed = Signal()

    def __init__(self, s: Setting) -> None:
        super().__init__()
        self.folder = s.widget == "folder"
        self.title = row_label(s).capitalize()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(s.help)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.edit.editingFinished.connect(self.changed)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(browse)

    def _browse(self) -> None:
        if self.folder:
            path = QFileDialog.getExistingDirectory(self, self.title, self.edit.text())
        else:
            path, _ = QFileDialog.getOpenFileName(self, self.title, self.edit.text(), PARTICLE_FILTER)
        if path:
            self.write(path)
            self.changed.emit()

    def read(self) -> str:
        """The path as typed, without surrounding spaces (may be empty)."""
        return self.edit.text().strip()

    def write(self, value: str) -> None:
        """Show ``value``."""
        self.edit.setText(str(value))


class SwitchInput(QWidget):
    """When auto-encoding ends: auto, at an epoch (the spin box), or manual (only with the button)."""

    def __init__(self, s: Setting) -> None:
        super().__init__()
        self.combo = QComboBox()
        self.combo.addItems(SWITCH_MODES)
        self.epoch = QSpinBox()
        self.epoch.setRange(0, s.most)
        self.epoch.setValue(max(1, config_defaults()["epochs"] // 2))
        self.combo.currentTextChanged.connect(lambda mode: self.epoch.setEnabled(mode == "at epoch"))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.epoch)
        self.write(s.default)

    def read(self) -> int | str | None:
        """`RunConfig.switch` for the chosen mode."""
        mode = self.combo.currentText()
        if mode == "at epoch":
            return self.epoch.value()
        return "auto" if mode == "auto" else None

    def write(self, value: int | str | None) -> None:
        """Show ``value``: "auto", an epoch number, or None (manual)."""
        if isinstance(value, int):
            self.epoch.setValue(value)
        self.combo.setCurrentText({"auto": "auto", None: "manual"}.get(value, "at epoch"))
        self.epoch.setEnabled(self.combo.currentText() == "at epoch")


class DeviceInput(QComboBox):
    """auto, cpu, then the devices detected in the background (best first), 'auto' naming its pick."""

    def __init__(self, s: Setting) -> None:
        super().__init__()
        self.addItem("auto", "auto")
        self.addItem("cpu", "cpu")
        self.setToolTip("Detecting devices…")
        self._devices = detected_devices()
        self._poll = QTimer(self, interval=100)
        self._poll.timeout.connect(self._poll_devices)
        self._poll.start()
        self.write(s.default)

    def _poll_devices(self) -> None:
        if not self._devices.done():
            return
        self._poll.stop()
        if self._devices.exception() is not None:
            self.setToolTip(f"Device detection failed: {self._devices.exception()}")
        else:
            self._show(self._devices.result())

    def _show(self, found: list[str]) -> None:
        self.setItemText(0, f"auto ({found[0]})")
        for name in found:
            if self.findData(name) < 0:
                self.insertItem(self.count() - 1, name, name)
        self.setToolTip(f"Detected: {', '.join(found)}")

    def read(self) -> str:
        """The chosen device name."""
        return self.currentData()

    def write(self, value: str) -> None:
        """Choose ``value`` (added when not offered yet, e.g. cuda:1)."""
        if self.findData(value) < 0:
            self.addItem(value, value)
        self.setCurrentIndex(self.findData(value))


Input = IntInput | ChoiceInput | BoolInput | PathInput | SwitchInput | DeviceInput
"""Every input has ``read()`` (its RunConfig value) and ``write(value)``."""

_WIDGETS = {"file": PathInput, "folder": PathInput, "switch": SwitchInput, "device": DeviceInput}


def make_input(s: Setting) -> Input:
    """The input widget a declared setting calls for, showing its default, its help as the tooltip."""
    if s.widget:
        widget = _WIDGETS[s.widget](s)
    elif isinstance(s.default, bool):
        widget = BoolInput(s)
    elif s.choices is not None:
        widget = ChoiceInput(s)
    elif s.low is not None:
        widget = IntInput(s)
    else:
        raise TypeError(f"no dock widget for the setting {s.name}: declare its widget")
    if not widget.toolTip():
        widget.setToolTip(described(s.help, s.default))
    return widget
