"""Widgets rendered from made-up snapshots on a GUI-free ViewerModel: markers, histogram, buttons, layer."""

from importlib.resources import files

import numpy as np
import pytest
import yaml

from napari_cryospin._napari._dock import ReconstructionDock, progress_text, status_line
from napari_cryospin._napari._explorer import RunExplorer
from napari_cryospin._napari._hub import hub_for
from napari_cryospin._napari._plots import RunPlots, head_percentages
from napari_cryospin._napari._posterior_view import PosteriorView
from napari_cryospin._napari._verdict import short_verdict, verdict_lines
from napari_cryospin._napari._volume import MAP_LAYER
from napari_cryospin.engine.device import available_devices
from napari_cryospin.engine.events import Command, Stage


def _publish(viewer, snapshot):
    hub_for(viewer).publish(snapshot)


@pytest.mark.parametrize("heads", [1, 4, 7])
def test_posterior_view_marks_every_head_and_rings_the_winner(qtbot, ui_viewer, ui_snapshot, heads):
    view = PosteriorView(ui_viewer)
    qtbot.addWidget(view)
    snapshot = ui_snapshot(heads=heads)
    _publish(ui_viewer, snapshot)
    assert len(view.head_artists) == heads
    colours = {tuple(artist.get_facecolor()[0]) for artist in view.head_artists}
    assert len(colours) == heads
    labels = [text.get_text() for text in view.figure.axes[0].get_legend().get_texts()]
    winner = snapshot.particle.winner
    assert labels[winner] == f"head {winner + 1} (winner)"
    assert view.head_artists[winner].get_sizes()[0] > view.head_artists[(winner + 1) % heads].get_sizes()[
        0
    ] or (heads == 1)


def test_when_the_kept_pose_wins_the_posterior_says_how_far_each_head_was(qtbot, ui_viewer, ui_snapshot):
    view = PosteriorView(ui_viewer)
    qtbot.addWidget(view)
    snapshot = ui_snapshot(heads=3)
    particle = snapshot.particle
    particle.labels, particle.winner = ["head 1", "head 2", "kept"], 2
    _publish(ui_viewer, snapshot)
    a, b = particle.candidates[0], particle.candidates[2]
    degrees = np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1)))
    assert "kept pose wins" in view.info.text() and f"head 1 {degrees:.0f}°" in view.info.text()
    legend = view.figure.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["head 1", "head 2", "kept pose (winner)"]
    assert legend.get_title().get_text() == "heads from 1 (poses.star's cryospinHead from 0)"
    particle.winner = 0
    _publish(ui_viewer, snapshot)
    assert "No head found" not in view.info.text()


def test_posterior_view_ignores_other_particles_and_asks_the_run(qtbot, ui_viewer, ui_snapshot):
    view = PosteriorView(ui_viewer)
    qtbot.addWidget(view)
    sent = []
    hub_for(ui_viewer).attach(sent.append)
    view.select_particle(5)
    assert sent == [Command("particle", 5)]
    _publish(ui_viewer, ui_snapshot(particle=3))
    assert view.view is None
    _publish(ui_viewer, ui_snapshot(particle=5))
    assert view.view.index == 5


def test_decoding_shows_the_current_pose_and_its_path(qtbot, ui_viewer, ui_snapshot):
    view = PosteriorView(ui_viewer)
    qtbot.addWidget(view)
    _publish(ui_viewer, ui_snapshot(stage=Stage.DECODING))
    sky = view.figure.axes[0]
    assert len(view.head_artists) == 1
    assert any(line.get_label() == "path in auto-decoding" for line in sky.get_lines())


def test_centre_on_winner_rotates_the_sky_to_it(qtbot, ui_viewer, ui_snapshot):
    view = PosteriorView(ui_viewer)
    qtbot.addWidget(view)
    snapshot = ui_snapshot()
    _publish(ui_viewer, snapshot)
    view.centre_on_winner()
    winner = view.head_artists[snapshot.particle.winner].get_offsets()[0]
    np.testing.assert_allclose(winner, [0.0, 0.0], atol=1e-2)


def test_view_follows_the_stack_layer_slice(qtbot, ui_viewer):
    stack = ui_viewer.add_image(np.zeros((30, 8, 8)), metadata={"particles_path": "p.star"})
    view = PosteriorView(ui_viewer)
    qtbot.addWidget(view)
    ui_viewer.layers.selection.active = stack
    ui_viewer.dims.set_current_step(0, 12)
    assert view.particle_spin.value() == 12
    assert view.particle_slider.maximum() == 29


def test_the_posterior_names_the_particle_napari_shows(qtbot, ui_viewer):
    stack = ui_viewer.add_image(np.zeros((200, 8, 8)), metadata={"particles_path": "p.star"})
    ui_viewer.dims.set_current_step(0, 150)
    view = PosteriorView(ui_viewer)  # opened with napari's slider at 150
    qtbot.addWidget(view)
    assert view.particle_spin.value() == 150 == hub_for(ui_viewer).particle
    ui_viewer.add_image(np.zeros((200, 8, 8)), name="another layer")  # now the selected one
    assert ui_viewer.layers.selection.active is not stack
    ui_viewer.dims.set_current_step(0, 199)
    assert view.particle_spin.value() == 199
    hub_for(ui_viewer).select_particle(57)  # chosen elsewhere (the explorer's table): napari follows
    assert view.particle_spin.value() == 57 and ui_viewer.dims.current_step[0] == 57
    view.follow_check.setChecked(False)
    ui_viewer.dims.set_current_step(0, 10)
    assert view.particle_spin.value() == 57
    view.follow_check.setChecked(True)
    assert view.particle_spin.value() == 10


def test_open_stack_names_the_file_chosen_not_the_sample(qtbot, ui_viewer, tmp_path):
    dock = ReconstructionDock(ui_viewer)
    qtbot.addWidget(dock)
    sample = str(tmp_path / "sample" / "particles.star")
    ui_viewer.add_image(np.zeros((3, 8, 8)), name="simulated particles", metadata={"particles_path": sample})
    settings = dock.settings
    assert settings.layer_combo.currentText() == "simulated particles"
    settings.set_particles(str(tmp_path / "mine.star"))  # Browse… picked another file
    assert settings.layer_combo.currentIndex() == 0
    assert settings.inputs["particles"].read().endswith("mine.star")
    ui_viewer.add_image(np.zeros((3, 8, 8)), name="other", metadata={"particles_path": "other.star"})
    assert settings.layer_combo.currentIndex() == 0  # a layer opened later does not claim the file
    settings.inputs["particles"].edit.setText(sample)  # typed back: the layer of that file is named again
    assert settings.layer_combo.currentText() == "simulated particles"


def test_histogram_sums_to_100_percent(qtbot, ui_viewer, ui_snapshot):
    plots = RunPlots(ui_viewer)
    qtbot.addWidget(plots)
    _publish(ui_viewer, ui_snapshot(heads=7))
    heights = plots.bar_heights()
    assert len(heights) == 7
    assert heights.sum() == pytest.approx(100.0)
    np.testing.assert_allclose(head_percentages([0.0, 0.0]), 0.0)


def test_plots_trace_loss_resolution_and_fsc(qtbot, ui_viewer, ui_snapshot):
    plots = RunPlots(ui_viewer)
    qtbot.addWidget(plots)
    for t in (60.0, 120.0, 180.0):
        _publish(ui_viewer, ui_snapshot(elapsed=t))
    assert len(plots.loss_ax.get_lines()[0].get_xdata()) == 3
    assert len(plots.resolution_ax.get_lines()[0].get_xdata()) == 1
    assert len(plots.fsc_ax.get_lines()) == 2  # curve and the 0.143 line
    _publish(ui_viewer, ui_snapshot(elapsed=30.0))  # an older report arriving late is not drawn backwards
    minutes = plots.loss_ax.get_lines()[0].get_xdata()
    assert len(minutes) == 3 and np.all(np.diff(minutes) > 0)
    hub_for(ui_viewer).attach(lambda command: None)  # a new run starts a new trace
    _publish(ui_viewer, ui_snapshot(elapsed=1.0))
    assert len(plots.trace.loss) == 1


def _records(resolutions: list[float | None], epoch_s: float = 60.0) -> list[dict]:
    """Per-epoch records as the engine keeps them (metrics.json's "epochs"): one a minute."""
    return [
        {"epoch": e, "wall_s": epoch_s * (e + 1), "loss": 1.0 / (e + 1), "resolution": r}
        for e, r in enumerate(resolutions)
    ]


def test_opening_the_run_in_the_explorer_keeps_the_plots_history(qtbot, ui_viewer, ui_snapshot):
    plots = RunPlots(ui_viewer)
    qtbot.addWidget(plots)
    history = _records([None, 20.0, 15.0])
    for epoch in range(3):  # a live run: reports within each epoch, the records of the epochs ended
        for t in (10.0, 40.0):
            snapshot = ui_snapshot(elapsed=60.0 * epoch + t)
            snapshot.history = history[:epoch]
            _publish(ui_viewer, snapshot)
    hub = hub_for(ui_viewer)
    hub.attach(lambda command: None)  # the explorer opens the finished run: its summary, its clock
    summary = ui_snapshot(elapsed=history[-1]["wall_s"], stage=Stage.DONE)
    summary.history, summary.resolution = history, 14.0
    _publish(ui_viewer, summary)
    minutes, loss = plots.loss_ax.get_lines()[0].get_data()
    np.testing.assert_allclose(minutes, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(loss, [1.0, 0.5, 1.0 / 3.0])
    np.testing.assert_allclose(plots.resolution_ax.get_lines()[0].get_ydata(), [20.0, 15.0])
    assert plots.trace.final_resolution == (3.0, 14.0)  # the final maps' point, drawn apart


def test_resolution_axis_spans_at_least_two_angstrom(qtbot, ui_viewer, ui_snapshot):
    plots = RunPlots(ui_viewer)
    qtbot.addWidget(plots)
    snapshot = ui_snapshot(elapsed=200.0)
    snapshot.history = _records([24.45, 24.41, 24.43])
    _publish(ui_viewer, snapshot)
    low, high = plots.resolution_ax.get_ylim()
    assert high - low >= 2.0 and low < 24.41 and high > 24.45


def test_no_head_bars_before_the_heads_exist(qtbot, ui_viewer, ui_snapshot):
    plots = RunPlots(ui_viewer)
    qtbot.addWidget(plots)
    _publish(ui_viewer, ui_snapshot(stage=Stage.EXPLORING))
    assert len(plots.bar_heights()) == 0 and "no heads yet" in plots.heads_ax.texts[0].get_text()
    _publish(ui_viewer, ui_snapshot(stage=Stage.ENCODING))
    assert plots.bar_heights().sum() == pytest.approx(100.0)


def test_dock_flush_updates_layer_in_place_and_switch_button(qtbot, ui_viewer, ui_snapshot, tmp_path):
    stack = ui_viewer.add_image(np.zeros((5, 8, 8)), metadata={"particles_path": "p.star"})
    dock = ReconstructionDock(ui_viewer)
    qtbot.addWidget(dock)
    dock.worker = object()  # pretend a run is going: only the GUI side is under test here
    dock._on_snapshot(ui_snapshot(stage=Stage.ENCODING))
    qtbot.waitUntil(lambda: MAP_LAYER in ui_viewer.layers)
    layer = ui_viewer.layers[MAP_LAYER]
    assert ui_viewer.dims.ndisplay == 3
    assert tuple(layer.scale) == (2.5, 2.5, 2.5)
    assert ui_viewer.scale_bar.visible and str(layer.units[0]) == "angstrom"  # a scale bar in Å
    assert dock.switch_button.isEnabled()
    dock.switch()
    assert not dock.switch_button.isEnabled()
    assert dock._commands.get_nowait() == Command("switch")
    snapshot = ui_snapshot(stage=Stage.ENCODING)
    snapshot.volume = 2 * snapshot.volume
    dock._on_snapshot(snapshot)
    qtbot.waitUntil(lambda: layer.data.max() > 1.5)
    assert ui_viewer.layers[MAP_LAYER] is layer and len(ui_viewer.layers) == 2
    assert not stack.visible
    assert layer.contrast_limits[1] == pytest.approx(2.0)
    assert not dock.switch_button.isEnabled()
    assert dock.status.text().startswith("epoch 2 ·") and "12.0 Å" in dock.status.text()


def test_user_contrast_survives_updates(qtbot, ui_viewer, ui_snapshot):
    dock = ReconstructionDock(ui_viewer)
    qtbot.addWidget(dock)
    dock._on_snapshot(ui_snapshot())
    qtbot.waitUntil(lambda: MAP_LAYER in ui_viewer.layers)
    layer = ui_viewer.layers[MAP_LAYER]
    layer.contrast_limits = (0.1, 0.5)
    dock._on_snapshot(ui_snapshot())
    qtbot.wait(2 * 150 + 50)
    assert tuple(layer.contrast_limits) == pytest.approx((0.1, 0.5))


def test_switch_button_is_off_in_decoding_and_without_a_run(qtbot, ui_viewer, ui_snapshot):
    dock = ReconstructionDock(ui_viewer)
    qtbot.addWidget(dock)
    assert not dock.switch_button.isEnabled() and not dock.stop_button.isEnabled()
    dock.worker = object()
    dock._on_snapshot(ui_snapshot(stage=Stage.DECODING))
    qtbot.waitUntil(lambda: dock.status.text().startswith("epoch"))
    assert not dock.switch_button.isEnabled()
    dock.worker = None  # no real run to stop when the dock closes


def test_bad_input_is_reported_without_starting(qtbot, ui_viewer, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_cryospin._napari._dock.show_error", shown.append)
    dock = ReconstructionDock(ui_viewer)
    qtbot.addWidget(dock)
    dock.start()
    dock.settings.inputs["particles"].edit.setText(str(tmp_path / "missing.star"))
    dock.settings.inputs["out"].edit.setText(str(tmp_path / "out"))
    dock.start()
    assert not dock.running
    assert shown[0].startswith("No particles chosen") and "missing.star: file not found" in shown[1]


def test_dock_offers_open_particle_layers_and_detected_devices(qtbot, ui_viewer, tmp_path):
    dock = ReconstructionDock(ui_viewer)
    qtbot.addWidget(dock)
    ui_viewer.add_image(
        np.zeros((3, 8, 8)), name="parts", metadata={"particles_path": str(tmp_path / "p.star")}
    )
    settings = dock.settings
    assert settings.layer_combo.itemText(1) == "parts"
    assert settings.inputs["particles"].edit.text() == str(tmp_path / "p.star")
    assert settings.out_path() == str(tmp_path / "cryospin")
    qtbot.waitUntil(lambda: settings.inputs["device"].toolTip().startswith("Detected"))
    devices = [settings.inputs["device"].itemData(i) for i in range(settings.inputs["device"].count())]
    assert devices == ["auto", *available_devices()]
    assert settings.inputs["device"].itemText(0) == f"auto ({available_devices()[0]})"
    settings.inputs["switch"].combo.setCurrentText("at epoch")
    settings.inputs["switch"].epoch.setValue(3)
    assert settings.inputs["switch"].read() == 3
    settings.inputs["switch"].combo.setCurrentText("manual")
    assert settings.inputs["switch"].read() is None
    (tmp_path / "p.star").write_text("data_\n")
    assert settings.inputs["polarity"].currentData() == "auto" and settings.config().polarity == "auto"
    settings.inputs["polarity"].setCurrentIndex(settings.inputs["polarity"].findData("white"))
    assert settings.config().polarity == "white"
    config = settings.config()
    assert config.junk == "auto" and config.noise_model == "auto" and config.box is None
    assert settings.inputs["box"].text() == "auto"  # the working box is chosen for the device
    settings.inputs["junk"].setCurrentIndex(settings.inputs["junk"].findData("keep"))
    settings.inputs["noise_model"].setCurrentIndex(settings.inputs["noise_model"].findData("white"))
    settings.inputs["box"].setValue(48)
    config = settings.config()
    assert (config.junk, config.noise_model, config.box) == ("keep", "white", 48)
    assert config.symmetry == "C1"


def test_status_line_reads_like_the_issue_asks(ui_snapshot):
    line = status_line(ui_snapshot(), None)
    assert line == "epoch 2 · auto-encoding · 250 images/s · loss 0.5 · resolution 12.0 Å"
    snapshot = ui_snapshot()
    snapshot.polarity = "protein white, inverted (auto, z -54)"
    assert status_line(snapshot, None).endswith("resolution 12.0 Å · protein white, inverted (auto, z -54)")


def test_the_end_says_each_number_once(ui_snapshot):
    snapshot = ui_snapshot(stage=Stage.DONE)
    snapshot.images_per_s, snapshot.resolution = 0.0, 24.8
    snapshot.message = "done: 24.7 Å (mask-corrected FSC 0.143); validity: the two halves agree"
    line = status_line(snapshot, None)
    assert "images/s" not in line and "24.8" not in line and "Å" not in line
    assert line == "epoch 2 · done: the verdict is below"
    assert verdict_lines(snapshot.message) == [
        "• done: 24.7 Å (mask-corrected FSC 0.143)",
        "• validity: the two halves agree",
    ]
    snapshot.message = "stopped at epoch 2; checkpoint saved in run/"
    assert status_line(snapshot, None) == "epoch 2 · done\n" + snapshot.message


def test_the_verdict_lists_each_clause_and_each_reason_on_a_line():
    message = (
        "done: 7.7 Å (mask-corrected FSC 0.143 of the 64-px half maps; B 407 Å², volume_sharpened.mrc), "
        "protein dark (auto, z 143); WARNING: the map is not reliable (the halves shared one map until the "
        "switch; the final half maps agree only to 5.2 cycles per box (FSC 0.143)); no symmetry found (C1)"
    )
    assert verdict_lines(message) == [
        "• done: 7.7 Å:",
        "    – mask-corrected FSC 0.143 of the 64-px half maps",
        "    – B 407 Å², volume_sharpened.mrc",
        "• protein dark (auto, z 143)",
        "• WARNING: the map is not reliable:",
        "    – the halves shared one map until the switch",
        "    – the final half maps agree only to 5.2 cycles per box (FSC 0.143)",
        "• no symmetry found (C1)",
    ]


def test_progress_bar_shows_percentage_stage_and_time_left(qtbot, ui_viewer, ui_snapshot):
    dock = ReconstructionDock(ui_viewer)
    qtbot.addWidget(dock)
    dock.worker = object()  # pretend a run is going: only the GUI side is under test here
    dock._on_snapshot(ui_snapshot(elapsed=120.0))  # 30 % after 2 min: about 5 min left
    qtbot.waitUntil(lambda: dock.progress_bar.value() == 300)
    assert dock.progress_bar.format() == "30 % · auto-encoding · about 5 min left"
    assert progress_text(ui_snapshot(stage=Stage.DONE)) == "30 % · done"


def test_every_manifest_widget_opens_on_the_viewers_hub(qtbot, ui_viewer, ui_snapshot):
    import importlib

    opened = []
    manifest = yaml.safe_load(files("napari_cryospin").joinpath("napari.yaml").read_text())
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    widgets = manifest["contributions"]["widgets"]
    assert len(widgets) == 4
    for widget in widgets:
        module, name = commands[widget["command"]].split(":")
        instance = getattr(importlib.import_module(module), name)(napari_viewer=ui_viewer)
        qtbot.addWidget(instance)
        opened.append(instance)
        assert instance.hub is hub_for(ui_viewer)  # every dock of a viewer meets the same run
    by_type = {type(w): w for w in opened}
    assert set(by_type) == {ReconstructionDock, PosteriorView, RunPlots, RunExplorer}
    hub_for(ui_viewer).publish(ui_snapshot(particle=0))
    assert by_type[PosteriorView].view is not None  # the snapshot reached the listening docks
    assert by_type[RunPlots].bar_heights().sum() == pytest.approx(100.0)


def test_a_view_without_posterior_keeps_the_last_one(qtbot, ui_viewer, ui_snapshot):
    view = PosteriorView(ui_viewer)
    qtbot.addWidget(view)
    _publish(ui_viewer, ui_snapshot(stage=Stage.DECODING))
    kept = view.view.log_posterior
    later = ui_snapshot(stage=Stage.DECODING)
    later.particle.log_posterior = None
    _publish(ui_viewer, later)
    assert view.view.log_posterior is kept


def test_the_posterior_marks_the_winners_symmetry_mates(qtbot, ui_viewer, ui_snapshot):
    from napari_cryospin.geometry.symmetry import group_operators

    view = PosteriorView(ui_viewer)
    qtbot.addWidget(view)
    snapshot = ui_snapshot(heads=3)
    _publish(ui_viewer, snapshot)
    assert view.mate_artist is None  # C1: nothing to mark
    particle = snapshot.particle
    particle.mates = group_operators("C4")[1:] @ particle.candidates[particle.winner]
    particle.mates_group = "C4"
    _publish(ui_viewer, snapshot)
    assert len(view.mate_artist.get_offsets()) == 3
    labels = [text.get_text() for text in view.figure.axes[0].get_legend().get_texts()]
    assert "C4 mates of the head" in " ".join(labels)


def test_the_notification_of_an_unreliable_run_names_no_resolution(ui_snapshot):
    snapshot = ui_snapshot(stage=Stage.DONE)
    snapshot.resolution = 9.0
    snapshot.message = "done: 9.0 Å (mask-corrected FSC 0.143); validity: the two halves agree"
    assert short_verdict(snapshot) == "cryoSPIN: 9.0 Å, map reliable"
    snapshot.message = (
        "done: the half maps agree to 9.0 Å, not a resolution the run stands behind (mask-corrected FSC "
        "0.143); WARNING: the map is not reliable (23 % of the particles fit a mate as well)"
    )
    assert short_verdict(snapshot) == "cryoSPIN: map NOT reliable (see dock)"
    assert verdict_lines(snapshot.message)[0] == (
        "• done: the half maps agree to 9.0 Å, not a resolution the run stands behind (mask-corrected FSC "
        "0.143)"
    )
