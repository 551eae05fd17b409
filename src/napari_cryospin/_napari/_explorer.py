"""The "Run explorer" dock: open a finished run folder, browse its map, particles and pose posteriors.

Reading the folder and bringing the model back from checkpoint.pt (torch) happen in thread workers.
The map goes to a layer, the run's history and FSC to the "Run plots" dock and each chosen particle's
pose picture to the "Pose posterior" dock, through the viewer's hub, as for a live run. The particle
table sorts by any score; a click shows that particle's posterior; brushing a histogram range selects
particles, and the selection exports as a RELION 3.1 STAR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.widgets import SpanSelector
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QAbstractTableModel, QEvent, QModelIndex, QSortFilterProxyModel, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..engine.error_funnel import explain
from ..engine.events import Snapshot, Stage
from ..engine.run_results import POSE_CHANGE, RunResults, export_selection, read_run
from ._hub import hub_for
from ._layout import dock_in_tabs, scrolled
from ._map_display import MapDisplay
from ._volume import ANGSTROM, MAP_LAYER, RUN_MAP, hide_map, show_volume

COLUMN_TIPS = {
    "particle": "The particle's row in poses.star, counted from 0.",
    "head": "Which encoder head's pose won, counted from 1 as in the plots' legend (poses.star's "
    "cryospinHead counts from 0). One more than the number of heads: the kept pose beat every head.",
    "loss": "How badly the final map, seen at the particle's final pose, explains its image (mean squared "
    "residual). High: the image does not look like the map there.",
    "confidence": "How much better the final pose fits than the best rival pose more than 15° away "
    "(log-likelihood, nats). Near 0 or below: another pose fits as well. Empty: every head agrees.",
    POSE_CHANGE: "How far the pose moved between the last two saved epochs (degrees).",
    "ParticleSelectZScore": "Junk score: how much worse the image matches the map than most particles do "
    "(robust z). High: likely junk (empty picks, ice, aggregates); the run leaves out those above its "
    "threshold (metrics.json, junk).",
    "LogLikeliContribution": "How much better the map at the pose explains the image than noise alone "
    "(log-likelihood ratio, nats). Low: the image holds little of the map.",
    "mate margin": "How much better the pose fits than its best 'mate' — the same view turned 180° in "
    "plane, seen from the other side, turned about one of the map's axes, or the best pose at least 90° "
    "away (log-likelihood on the other half's map, nats). 1 or less: the image cannot tell the pose from "
    "that one (common for small elongated particles at low SNR).",
    "mate": "Which turn of the pose fits best after the pose itself: 1 in-plane 180°, 2 flip about x, "
    "3 flip about y, 4–6 the map's axes from the longest to the shortest, 7 a pose at least 90° away.",
}
"""Plain-words tooltips of the particle table's columns (RELION's names kept for the columns RELION has)."""
HISTOGRAM_FIRST = ("confidence", "ParticleSelectZScore")
"""The histogram opens on the first of these columns the run has (a score that separates particles)."""


def warm_up() -> None:
    """Import the model's modules (torch, scipy) ahead of the first run folder: call it in a worker."""
    from ..engine import saved_run  # noqa: F401


def load_model(folder: Path):
    """The run's model from its checkpoint (imports torch: call it in a worker thread)."""
    import torch

    from ..engine.saved_run import SavedRun

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return SavedRun(folder)


class TableModel(QAbstractTableModel):
    """A read-only Qt model of a DataFrame; sorting by a column sorts its numbers, not their text."""

    def __init__(self, frame: pd.DataFrame | None = None) -> None:
        super().__init__()
        self.frame = frame if frame is not None else pd.DataFrame()

    def set_frame(self, frame: pd.DataFrame) -> None:
        """Show ``frame``."""
        self.beginResetModel()
        self.frame = frame
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.frame)

    def columnCount(self, parent: QModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.frame.columns)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        value = self.frame.iat[index.row(), index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            if isinstance(value, (float, np.floating)):
                return f"{value:.4g}"
            return str(value)
        if role == Qt.ItemDataRole.UserRole:
            return float(value) if isinstance(value, (int, float, np.number)) else str(value)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        name = str(self.frame.columns[section])
        if role == Qt.ItemDataRole.ToolTipRole:
            return COLUMN_TIPS.get(name)
        return name if role == Qt.ItemDataRole.DisplayRole else None


class RunExplorer(QWidget):
    """Open a run folder; the map, plots and posterior docks show it; select and export particles."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.hub = hub_for(napari_viewer)
        self.results: RunResults | None = None
        self.model = None
        self.selection = np.zeros(0, dtype=np.int64)
        self._busy = False
        self._pending: int | None = None
        self._span: tuple[float, float] | None = None
        self._live_hidden: list = []  # the live map's layers this dock hid (shown again when it closes)

        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("a run folder (--out of cryospin reconstruct)")
        self.browse_button = QPushButton("Browse…")
        self.open_button = QPushButton("Open run")
        self.status = QLabel("Open a finished run folder to browse it.")
        self.status.setWordWrap(True)
        self.map_display = MapDisplay(napari_viewer, RUN_MAP)
        display = QCollapsible("Map display")
        display.addWidget(self.map_display.native)

        self.table_model = TableModel()
        self.proxy = QSortFilterProxyModel()
        self.proxy.setSourceModel(self.table_model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table.setMinimumHeight(160)
        self.table.clicked.connect(self._on_row_clicked)

        self.column_combo = QComboBox()
        self.figure = Figure(figsize=(4.0, 2.0), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.hist_ax = self.figure.add_subplot()
        self.selector: SpanSelector | None = None
        self.selection_label = QLabel("No selection: brush a range in the histogram.")
        self.selection_label.setWordWrap(True)
        self.clear_button = QPushButton("Clear selection")
        self.export_button = QPushButton("Export selection…")
        self.export_button.setToolTip(
            "Write the selected particles as a RELION 3.1 STAR (poses, CTF, optics)"
        )

        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.browse_button)
        row.addWidget(self.open_button)
        hist_row = QHBoxLayout()
        hist_row.addWidget(QLabel("histogram of"))
        hist_row.addWidget(self.column_combo, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.clear_button)
        buttons.addWidget(self.export_button)
        content = QWidget()  # scrolled: a dock shorter than this never lays the plot over the label
        layout = QVBoxLayout(content)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(display)
        layout.addWidget(self.table, 1)
        layout.addLayout(hist_row)
        layout.addWidget(self.canvas)
        layout.addWidget(self.selection_label)
        layout.addLayout(buttons)
        QVBoxLayout(self).addWidget(scrolled(content))
        dock_in_tabs(self)

        self.browse_button.clicked.connect(self._browse)
        self.open_button.clicked.connect(lambda: self.open_folder(self.folder_edit.text()))
        self.column_combo.currentTextChanged.connect(self._draw_histogram)
        self.clear_button.clicked.connect(self.clear_selection)
        self.export_button.clicked.connect(self._export_dialog)
        self._update_buttons()
        create_worker(warm_up, _connect={"errored": self._failed})  # imports off the GUI thread, early

    # ------------------------------------------------------------------------------- opening a run
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a cryoSPIN run folder", self.folder_edit.text())
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path):
        """Read ``folder`` in a worker; its map, plots and table appear when read. Returns the worker."""
        folder = Path(str(folder)).expanduser()
        self.folder_edit.setText(str(folder))
        self.status.setText(f"Reading {folder}…")
        self.model = None
        connect = {"returned": self._show_results, "errored": self._failed}
        worker = create_worker(read_run, folder, _connect=connect, _start_thread=False)
        worker.start()
        return worker

    def closeEvent(self, event) -> None:
        """Closing the explorer hides its map and shows the live map it hid."""
        self._give_back_the_view()
        super().closeEvent(event)

    def event(self, event) -> bool:
        """A dock taken out of napari's window (its close button) gives back the view as closing does."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self._give_back_the_view()
        return super().event(event)

    def _give_back_the_view(self) -> None:
        if not self._live_hidden:
            return
        hide_map(self.viewer, RUN_MAP)
        for layer in self._live_hidden:
            if layer in self.viewer.layers:
                layer.visible = True
        self._live_hidden = []

    def _failed(self, exc: BaseException) -> None:
        message = explain(exc)
        self.status.setText(message)
        show_error(message)

    def _show_results(self, results: RunResults) -> None:
        self.results = results
        self.selection = np.zeros(0, dtype=np.int64)
        self._span = None
        if results.volume is not None:
            self._live_hidden += hide_map(self.viewer, MAP_LAYER)  # two maps in one place hide each other
            show_volume(self.viewer, results.volume, results.voxel_size, name=RUN_MAP)
            self.map_display.apply()  # the run map shown again the chosen way (a live run may have hidden it)
            self.viewer.layers[RUN_MAP].metadata["run_folder"] = str(results.folder)
        for name, half in zip(("run half A", "run half B"), results.half_maps or (), strict=False):
            if name in self.viewer.layers:
                self.viewer.layers[name].data = half
            else:
                self.viewer.add_image(
                    half, name=name, scale=(results.voxel_size,) * 3, units=ANGSTROM, visible=False
                )
        table = results.table if results.table is not None else pd.DataFrame()
        self.table_model.set_frame(table)
        self.column_combo.blockSignals(True)
        self.column_combo.clear()
        self.column_combo.addItems([c for c in table.columns if c != "particle"])
        for index, name in enumerate(table.columns.drop("particle", errors="ignore")):
            self.column_combo.setItemData(index, COLUMN_TIPS.get(name), Qt.ItemDataRole.ToolTipRole)
        first = [name for name in HISTOGRAM_FIRST if name in table.columns]
        if first:
            self.column_combo.setCurrentText(first[0])
        self.column_combo.blockSignals(False)
        self._draw_histogram()
        self._update_buttons()
        self.status.setText(results.summary() + ("; loading the model…" if results.has_checkpoint else ""))
        for problem in results.problems:
            show_warning(problem)
        if results.has_checkpoint:
            connect = {"returned": self._model_ready, "errored": self._failed}
            create_worker(load_model, results.folder, _connect=connect, _start_thread=False).start()
            if not self.hub.is_running:  # a live run keeps the posterior dock; otherwise it shows this run
                self.hub.attach(self._on_command)
        self._publish(None)

    def _summary_snapshot(self) -> Snapshot:
        results = self.results
        history = results.history
        last = history[-1] if history else {}
        fractions = None
        if results.table is not None and "head" in results.table and results.heads:
            heads = results.table["head"].to_numpy()
            counts = np.bincount(heads[heads >= 1] - 1, minlength=results.heads + 1)
            fractions = counts / max(counts.sum(), 1)
        return Snapshot(
            epoch=max(0, len(history) - 1),
            step=0,
            stage=Stage.DONE,
            progress=1.0,
            elapsed_s=float(last.get("wall_s", 0.0)),
            images_per_s=0.0,
            loss=float(last.get("loss", float("nan"))),
            voxel_size=results.voxel_size,
            head_fractions=fractions,
            resolution=results.resolution,
            fsc=results.fsc,
            fsc_curves=results.fsc_curves,
            history=history,
            message=results.summary(),
        )

    def _publish(self, view) -> None:
        snapshot = self._summary_snapshot()
        snapshot.particle = view
        self.hub.publish(snapshot)

    def _model_ready(self, model) -> None:
        self.model = model
        self.status.setText(self.results.summary() + "; choose a particle to see its pose posterior.")
        self.show_particle(self.hub.particle)

    # --------------------------------------------------------------------------------- posteriors
    def _on_command(self, command) -> None:
        if command.kind == "particle" and command.value is not None:
            self.show_particle(int(command.value))

    def show_particle(self, index: int) -> None:
        """Compute particle ``index``'s pose picture in a worker (the latest request wins while busy)."""
        if self.model is None:
            return
        index = int(np.clip(index, 0, self.model.n - 1))
        if self._busy:
            self._pending = index
            return
        self._busy = True
        self.status.setText(f"Computing the pose posterior of particle {index}…")
        connect = {"returned": self._view_ready, "errored": self._failed, "finished": self._next_view}
        create_worker(self.model.particle_view, index, _connect=connect, _start_thread=False).start()

    def _view_ready(self, view) -> None:
        self._publish(view)
        self.status.setText(f"{self.results.summary()}; particle {view.index} shown in the Pose posterior.")

    def _next_view(self) -> None:
        self._busy = False
        if self._pending is not None:
            index, self._pending = self._pending, None
            self.show_particle(index)

    def _on_row_clicked(self, proxy_index) -> None:
        row = self.proxy.mapToSource(proxy_index).row()
        self.choose_particle(int(self.table_model.frame["particle"].iat[row]))

    def choose_particle(self, index: int) -> None:
        """Show particle ``index`` in the posterior dock (which follows the hub's choice)."""
        self.hub.select_particle(index)

    # ---------------------------------------------------------------------------- histogram, selection
    def _draw_histogram(self, _column: str | None = None) -> None:
        ax = self.hist_ax
        ax.clear()
        ax.tick_params(labelsize=7)
        column = self.column_combo.currentText()
        if self.results is None or self.results.table is None or not column:
            self.canvas.draw_idle()
            return
        values = self.results.table[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        ax.hist(finite, bins=50, color="0.6", edgecolor="none")
        if len(self.selection):
            ax.hist(
                values[self.selection][np.isfinite(values[self.selection])],
                bins=50,
                range=(finite.min(), finite.max()) if len(finite) else None,
                color="tab:orange",
            )
        ax.set_xlabel(column, fontsize=8)
        ax.set_ylabel("particles", fontsize=8)
        self.selector = SpanSelector(
            ax,
            self.select_range,
            "horizontal",
            useblit=False,
            props={"alpha": 0.25, "facecolor": "tab:orange"},
            interactive=True,
        )
        self.canvas.draw_idle()

    def select_range(self, low: float, high: float) -> None:
        """Select the particles whose value in the histogram's column lies in [low, high]."""
        column = self.column_combo.currentText()
        if self.results is None or self.results.table is None or not column:
            return
        values = self.results.table[column].to_numpy(dtype=float)
        low, high = min(low, high), max(low, high)
        self._span = (low, high)
        self.selection = np.flatnonzero((values >= low) & (values <= high))
        self.selection_label.setText(
            f"{len(self.selection)} of {len(values)} particles with {column} in [{low:.4g}, {high:.4g}]."
        )
        self._draw_histogram()
        self._update_buttons()

    def clear_selection(self) -> None:
        """Select nothing."""
        self.selection = np.zeros(0, dtype=np.int64)
        self._span = None
        self.selection_label.setText("No selection: brush a range in the histogram.")
        self._draw_histogram()
        self._update_buttons()

    def _update_buttons(self) -> None:
        can_export = self.results is not None and self.results.poses is not None and len(self.selection) > 0
        self.export_button.setEnabled(can_export)
        self.clear_button.setEnabled(len(self.selection) > 0)

    def _export_dialog(self) -> None:
        start = str(self.results.folder / "selected.star") if self.results else ""
        path, _ = QFileDialog.getSaveFileName(self, "Export the selected particles", start, "STAR (*.star)")
        if path:
            self.export_to(path)

    def export_to(self, path: str | Path) -> int:
        """Write the selection as a RELION 3.1 STAR at ``path``; returns the number written (0 on error)."""
        try:
            count = export_selection(self.results, self.selection, path)
        except Exception as exc:  # every failure is one line for the user
            self._failed(exc)
            return 0
        show_info(f"{count} particles written to {path}")
        return count
