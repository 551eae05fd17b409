"""The "cryoSPIN reconstruction" dock: run settings, Start/Stop/Resume, the switch button, live map.

A run lives in a napari thread worker (`EngineWorker`). Start asks before replacing another run's
results; closing the dock or napari stops the run the way Stop does (the engine saves a checkpoint),
waiting for it briefly.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..engine.config import RunConfig
from ..engine.events import Command, Snapshot, Stage
from ..engine.run_folder import results_in
from ._hub import hub_for
from ._layout import dock_in_tabs, scrolled
from ._map_display import MapDisplay
from ._run import EngineWorker, engine_stream, merge_snapshots
from ._settings import RunSettings
from ._verdict import VerdictPanel, short_verdict
from ._volume import MAP_LAYER, RUN_MAP, hide_map, show_volume

FLUSH_MS = 150
ETA_AFTER = 0.03
"""The share of the run done before the progress bar shows the time left (earlier guesses mislead)."""


class ReconstructionDock(QWidget):
    """Configure and watch one cryoSPIN run; the run itself lives in a napari thread worker."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.hub = hub_for(napari_viewer)
        self.settings = RunSettings(napari_viewer)
        self.worker: EngineWorker | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Event()
        self._pending: Snapshot | None = None
        self._progress: progress | None = None
        self._config: RunConfig | None = None
        self._switch_requested = False
        self._stopping = False
        self._flush_timer = QTimer(self, singleShot=True, interval=FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush)

        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.resume_button = QPushButton("Resume")
        self.switch_button = QPushButton("Switch to auto-decoding")
        self.start_button.setToolTip("Start a new run (asks before replacing results in the output folder)")
        self.stop_button.setToolTip("Save a checkpoint and end the run")
        self.resume_button.setToolTip("Continue from checkpoint.pt in the output folder")
        self.switch_button.setToolTip("Stop training the encoder; refine each particle's pose directly")
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume)
        self.switch_button.clicked.connect(self.switch)
        self.status = QLabel("Choose particles and press Start.")
        self.status.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setFormat("not started")
        self.verdict = VerdictPanel()

        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self.settings)
        layout.addLayout(buttons)
        layout.addWidget(self.switch_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.verdict)
        self.map_display = MapDisplay(napari_viewer, MAP_LAYER)
        display = QCollapsible("Map display")
        display.addWidget(self.map_display.native)
        layout.addWidget(display)
        layout.addStretch(1)
        QVBoxLayout(self).addWidget(scrolled(content))
        dock_in_tabs(self)
        self.settings.out_changed.connect(self._update_buttons)
        self._update_buttons()
        # Last resort when Qt deletes the dock with a run going: ask the engine to stop (no wait possible).
        self.destroyed.connect(functools.partial(self._commands.put, Command("stop")))

    @property
    def running(self) -> bool:
        """Whether a worker is running a reconstruction."""
        return self.worker is not None

    def start(self) -> None:
        """Start a fresh run with the current settings."""
        self._launch(resume=False)

    def resume(self) -> None:
        """Continue the run whose checkpoint is in the output folder."""
        self._launch(resume=True)

    def stop(self) -> None:
        """Ask the engine to save a checkpoint and end (it answers at its next snapshot)."""
        if self.running:
            self.send(Command("stop"))
            self._stopping = True
            self.stop_button.setEnabled(False)
            self.status.setText("Stopping: saving a checkpoint…")

    def switch(self) -> None:
        """Ask the engine to leave auto-encoding now; the button stays off for the rest of the run."""
        if self.running:
            self.send(Command("switch"))
            self._switch_requested = True
            self.switch_button.setEnabled(False)

    def shutdown(self) -> bool:
        """Stop a run as Stop does and wait for its checkpoint (see EngineWorker); True when it ended."""
        if not self.running:
            return True
        self.stop()
        return self.worker.stop_and_wait()

    def closeEvent(self, event) -> None:
        """Closing the dock stops its run cleanly."""
        self.shutdown()
        super().closeEvent(event)

    def event(self, event) -> bool:
        """A dock taken out of napari's window (its close button) stops its run cleanly."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.shutdown()
        return super().event(event)

    def send(self, command: Command) -> None:
        """Queue a command for the running engine (delivered in order, one per engine step)."""
        self._commands.put(command)

    def confirm_overwrite(self, out: str, found: list[str]) -> bool:
        """Ask whether a new run may replace the results already in `out` (a Qt question box)."""
        shown = ", ".join(found[:6]) + (", …" if len(found) > 6 else "")
        answer = QMessageBox.question(
            self,
            "Replace the results?",
            f"{out} holds the results of another run ({shown}).\n\nStart a new run and delete them? "
            "Choose No to keep them (use Resume to continue that run, or pick another output folder).",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _launch(self, resume: bool) -> None:
        if self.running:
            return
        try:
            config = self.settings.config(resume=resume)
        except ValueError as exc:
            show_error(str(exc))
            return
        found = results_in(config.out)
        if found and not resume:
            if not self.confirm_overwrite(config.out, found):
                self.status.setText("Not started: the output folder holds another run's results.")
                return
            config = dataclasses.replace(config, overwrite=True)
        self._config = config
        while not self._commands.empty():  # a late command of the previous run must not reach this one
            self._commands.get_nowait()
        self._done = threading.Event()
        self._pending = None
        self._switch_requested = False
        self._stopping = False
        self.send(Command("particle", self.hub.particle))
        self.worker = create_worker(
            engine_stream,
            config,
            self._commands,
            self._done,
            _start_thread=False,
            _worker_class=EngineWorker,
            _connect={"errored": self._on_errored},
        )
        self.worker.yielded.connect(self._on_snapshot)
        self.worker.returned.connect(self._on_returned)
        self.worker.finished.connect(self._on_finished)
        self._progress = progress(total=1000, desc="cryoSPIN")
        self.hub.attach(self.send)
        hide_map(self.viewer, RUN_MAP)  # a run opened in the explorer would hide the live map
        self.map_display.apply()
        self.verdict.show_message("")
        self.status.setText("Loading particles and building the model…")
        self._update_buttons()
        self.worker.start()

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self._pending = merge_snapshots(self._pending, snapshot)
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def _flush(self) -> None:
        snapshot, self._pending = self._pending, None
        if snapshot is None:
            return
        self.status.setText(status_line(snapshot, self._config))
        if is_verdict(snapshot):
            self.verdict.show_message(snapshot.message)
        self.progress_bar.setValue(round(snapshot.progress * 1000))
        self.progress_bar.setFormat(progress_text(snapshot))
        if self._progress is not None:
            self._progress.set_description(f"cryoSPIN {snapshot.stage.value}")
            self._progress.update(round(snapshot.progress * 1000) - self._progress.n)
        if snapshot.volume is not None:
            show_volume(self.viewer, snapshot.volume, snapshot.voxel_size)
        self._update_buttons(snapshot.stage)
        self.hub.publish(snapshot)

    def _on_returned(self, error: str | None) -> None:
        if error:
            show_error(error)
            self.status.setText(error)

    def _on_errored(self, error: Exception) -> None:
        self.status.setText(f"The run failed: {error}. See the notification for details.")

    def _on_finished(self) -> None:
        self._flush_timer.stop()
        self._flush()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self.hub.attach(None)
        self._update_buttons()
        last = self.hub.last
        if last is not None and last.stage == Stage.DONE and self._config is not None:
            (show_warning if "WARNING" in last.message else show_info)(short_verdict(last))
        elif self._config is not None and not (Path(self._config.out) / "checkpoint.pt").exists():
            show_warning("cryoSPIN: the run ended without a checkpoint; Resume is not possible.")

    def _update_buttons(self, stage: Stage | None = None) -> None:
        running = self.running
        checkpoint = Path(self.settings.out_path()) / "checkpoint.pt" if self.settings.out_path() else None
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running and checkpoint is not None and checkpoint.exists())
        self.stop_button.setEnabled(running and not self._stopping)
        self.switch_button.setEnabled(
            running and stage in (Stage.EXPLORING, Stage.ENCODING) and not self._switch_requested
        )
        self.settings.setEnabled(not running)


def progress_text(snapshot: Snapshot) -> str:
    """The progress bar's text: percentage, stage and, once a few percent are done, the time left."""
    text = f"{100 * snapshot.progress:.0f} % · {snapshot.stage.value}"
    if snapshot.stage == Stage.DONE or snapshot.progress < ETA_AFTER:
        return text
    left_s = snapshot.elapsed_s * (1.0 - snapshot.progress) / snapshot.progress
    return f"{text} · about {_duration(left_s)} left"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(5, 5 * round(seconds / 5)):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def is_verdict(snapshot: Snapshot) -> bool:
    """Whether ``snapshot`` is a finished run's last, whose message is the verdict (not a stop's)."""
    return snapshot.stage == Stage.DONE and snapshot.message.startswith("done")


def status_line(snapshot: Snapshot, config: RunConfig | None) -> str:
    """One line for the dock: epoch, stage, speed, loss and resolution; at the end, the verdict panel
    alone carries the numbers (the final maps' resolution, the verdict), so that none is said twice."""
    total = snapshot.epochs or (config.epochs if config is not None else 0)
    epoch = min(snapshot.epoch + 1, total) if total else snapshot.epoch + 1
    epochs = f"/{total}" if total else ""
    if is_verdict(snapshot):
        return f"epoch {epoch}{epochs} · {snapshot.stage.value}: the verdict is below"
    if snapshot.stage == Stage.DONE and snapshot.message:
        return f"epoch {epoch}{epochs} · {snapshot.stage.value}\n{snapshot.message}"
    parts = [f"epoch {epoch}{epochs}", snapshot.stage.value]
    if snapshot.images_per_s > 0:
        parts.append(f"{snapshot.images_per_s:.0f} images/s")
    if np.isfinite(snapshot.loss):
        parts.append(f"loss {snapshot.loss:.4g}")
    if snapshot.resolution is not None:
        parts.append(f"resolution {snapshot.resolution:.1f} Å")
    if snapshot.polarity:
        parts.append(snapshot.polarity)
    if snapshot.halves:
        parts.append(snapshot.halves)
    return " · ".join(parts)
