"""The dock's settings form is made from RunConfig's declarations: one input per dock setting, no other."""

from qtpy.QtWidgets import QCheckBox

from napari_cryospin._napari._inputs import row_label
from napari_cryospin._napari._settings import RunSettings
from napari_cryospin.engine.config import RunConfig, run_settings
from napari_cryospin.engine.setting import described


def test_every_dock_setting_has_an_input_in_its_section_with_its_help_and_default(qtbot, ui_viewer, tmp_path):
    settings = RunSettings(ui_viewer)
    qtbot.addWidget(settings)
    docked = [s for s in run_settings() if s.dock is not None]
    assert sorted(settings.inputs) == sorted(s.name for s in docked)
    for s in docked:
        widget = settings.inputs[s.name]
        if s.name != "device":  # the device box's tooltip lists the devices detected
            assert widget.toolTip() == described(s.help, s.default), s.name
        assert settings.advanced.isAncestorOf(widget) == (s.dock == "advanced"), s.name
        label = widget.parentWidget().layout().labelForField(widget)
        assert (widget.text() if isinstance(widget, QCheckBox) else label.text()) == row_label(s), s.name
    particles = tmp_path / "p.star"
    particles.write_text("data_\n")
    settings.set_particles(str(particles))
    untouched = settings.config()
    assert untouched == RunConfig(particles=str(particles), out=str(tmp_path / "cryospin"))


def test_each_input_writes_and_reads_back_a_setting(qtbot, ui_viewer, tmp_path):
    settings = RunSettings(ui_viewer)
    qtbot.addWidget(settings)
    chosen = {"heads": 3, "box": 48, "switch": 5, "polarity": "white", "half_maps": False, "device": "cpu"}
    for name, value in chosen.items():
        settings.inputs[name].write(value)
    assert {name: settings.inputs[name].read() for name in chosen} == chosen
    settings.inputs["box"].write(None)
    settings.inputs["switch"].write(None)
    assert settings.inputs["box"].text() == "auto" and settings.inputs["box"].read() is None
    assert settings.inputs["switch"].read() is None and not settings.inputs["switch"].epoch.isEnabled()
