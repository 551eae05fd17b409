"""The "Run plots" dock: share of particles won per head, loss and resolution against time, FSC."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.events import Snapshot, Stage
from ._hub import hub_for
from ._layout import dock_in_tabs
from ._posterior_view import head_colour


class RunTrace:
    """What the plots need from the snapshot stream: loss and resolution over time, last shares and FSC."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget everything recorded."""
        self.loss: list[tuple[float, float]] = []  # (minutes, loss): the epochs' records, then live points
        self.resolution: list[tuple[float, float]] = []  # (minutes, Å) of the epochs' evaluations
        self.final_resolution: tuple[float, float] | None = None  # (minutes, Å) of the final full-size maps
        self.stage: Stage | None = None
        self._epochs_loss: list[tuple[float, float]] = []
        self._live_loss: list[tuple[float, float]] = []
        self.head_fractions: np.ndarray | None = None
        self.fsc: tuple[np.ndarray, np.ndarray] | None = None
        self.fsc_curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # the final maps' FSCs, by label

    def add(self, snapshot: Snapshot) -> None:
        """Record one snapshot (a new run is a :meth:`clear`).

        The snapshot's per-epoch records (``history``, as in metrics.json) are the one source of the loss
        and resolution up to the last epoch's end, so a finished run opened in the explorer draws what
        the live run drew; live points extend the loss after it, never back in time.
        """
        minutes = snapshot.elapsed_s / 60.0
        self.stage = snapshot.stage
        records = [r for r in snapshot.history if r.get("wall_s") is not None]
        if records:
            end = float(records[-1]["wall_s"]) / 60.0
            self._epochs_loss = [
                (r["wall_s"] / 60.0, float(r["loss"])) for r in records if _finite(r.get("loss"))
            ]
            self._live_loss = [point for point in self._live_loss if point[0] > end]
            self.resolution = [
                (r["wall_s"] / 60.0, float(r["resolution"])) for r in records if _finite(r.get("resolution"))
            ]
        elif snapshot.resolution is not None and (
            not self.resolution or self.resolution[-1][1] != snapshot.resolution
        ):
            self.resolution.append((minutes, float(snapshot.resolution)))
        latest = max([t for t, _ in self._epochs_loss + self._live_loss], default=-np.inf)
        if snapshot.stage != Stage.DONE and _finite(snapshot.loss) and minutes > latest:
            self._live_loss.append((minutes, float(snapshot.loss)))
        self.loss = self._epochs_loss + self._live_loss
        done = snapshot.stage == Stage.DONE and snapshot.resolution is not None
        self.final_resolution = (minutes, float(snapshot.resolution)) if done else None
        if snapshot.head_fractions is not None:
            self.head_fractions = np.asarray(snapshot.head_fractions, dtype=float)
        if snapshot.fsc is not None:
            self.fsc = snapshot.fsc
        self.fsc_curves = dict(snapshot.fsc_curves or {})


RESOLUTION_SPAN_A = 2.0
"""The resolution axis spans at least this many Å, so that a change of 0.04 Å does not look large."""


def _at_least_span(ax, span: float) -> None:
    """Widen ``ax``'s y range about its middle to at least ``span`` (data units)."""
    low, high = ax.get_ylim()
    if high - low < span:
        middle = (low + high) / 2.0
        ax.set_ylim(middle - span / 2.0, middle + span / 2.0)


def _finite(value) -> bool:
    return value is not None and bool(np.isfinite(value))


def head_percentages(fractions: np.ndarray) -> np.ndarray:
    """Shares per head as percentages summing to 100 (an all-zero input stays zero)."""
    fractions = np.clip(np.asarray(fractions, dtype=float), 0.0, None)
    total = fractions.sum()
    return 100.0 * fractions / total if total > 0 else fractions


class RunPlots(QWidget):
    """Four live plots fed by the reconstruction dock through the viewer's hub."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.hub = hub_for(napari_viewer)
        self.trace = RunTrace()
        self.figure = Figure(figsize=(5.0, 5.0), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(460)
        axes = self.figure.subplots(2, 2)
        self.heads_ax, self.fsc_ax = axes[0]
        self.loss_ax, self.resolution_ax = axes[1]
        layout = QVBoxLayout(self)
        layout.addWidget(self.canvas)
        dock_in_tabs(self)
        self.hub.snapshot.connect(self.on_snapshot)
        self.hub.running.connect(self._on_running)
        if self.hub.last is not None:
            self.on_snapshot(self.hub.last)
        else:
            self.redraw()

    def _on_running(self, running: bool) -> None:
        if running:
            self.trace.clear()

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Add a snapshot and redraw."""
        self.trace.add(snapshot)
        self.redraw()

    def bar_heights(self) -> np.ndarray:
        """Heights of the head-histogram bars as drawn (percent)."""
        return np.array([patch.get_height() for patch in self.heads_ax.patches])

    def redraw(self) -> None:
        """Redraw all four plots from the trace."""
        for ax in (self.heads_ax, self.fsc_ax, self.loss_ax, self.resolution_ax):
            ax.clear()
            ax.tick_params(labelsize=7)
        self._draw_heads()
        self._draw_fsc()
        self._draw_series(self.loss_ax, self.trace.loss, "training loss", "loss")
        self._draw_series(self.resolution_ax, self.trace.resolution, "resolution (FSC 0.143)", "Å")
        if self.trace.final_resolution is not None:
            minutes, value = self.trace.final_resolution
            self.resolution_ax.plot([minutes], [value], "*", color="tab:red", label="final maps")
            self.resolution_ax.legend(fontsize=6)
        _at_least_span(self.resolution_ax, RESOLUTION_SPAN_A)
        self.canvas.draw_idle()

    def _draw_heads(self) -> None:
        ax = self.heads_ax
        ax.set_title("particles won per head (+ kept pose)", fontsize=9)
        ax.set_ylabel("%", fontsize=8)
        if self.trace.stage == Stage.EXPLORING:  # every particle's pose is the grid search's: no head yet
            ax.text(
                0.5,
                0.5,
                "no heads yet:\nthey start with auto-encoding",
                ha="center",
                va="center",
                color="0.5",
                fontsize=8,
                transform=ax.transAxes,
            )
            return
        if self.trace.head_fractions is None:
            return
        percent = head_percentages(self.trace.head_fractions)
        heads = np.arange(1, len(percent) + 1)
        colours = [head_colour(h) for h in range(len(percent) - 1)] + ["0.6"]
        ax.bar(heads, percent, color=colours, edgecolor="black", lw=0.5)
        ax.set_xticks(heads, [str(h) for h in heads[:-1]] + ["kept"], fontsize=7)
        ax.set_xlabel("head (from 1; poses.star's cryospinHead counts from 0)", fontsize=7)
        ax.set_ylim(0, max(100.0 / len(percent) * 2, percent.max() * 1.15))

    def _draw_fsc(self) -> None:
        ax = self.fsc_ax
        ax.set_title("half-map FSC", fontsize=9)
        ax.set_xlabel("spatial frequency (1/Å)", fontsize=8)
        ax.axhline(0.143, color="0.5", linestyle="--", linewidth=0.8)
        ax.set_ylim(-0.05, 1.05)
        if self.trace.fsc_curves:  # a finished run: its full-size half maps, masked and unmasked
            for label, (frequency, fsc) in self.trace.fsc_curves.items():
                ax.plot(frequency, fsc, linewidth=1.2, label=label)
            ax.legend(fontsize=6)
        elif self.trace.fsc is not None:
            frequency, fsc = self.trace.fsc
            ax.plot(frequency, fsc, color="tab:blue", linewidth=1.2)

    @staticmethod
    def _draw_series(ax, points: list[tuple[float, float]], title: str, unit: str) -> None:
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time (min)", fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        if points:
            minutes, values = np.array(points).T
            marker = "." if len(points) < 30 else None
            ax.plot(minutes, values, color="tab:blue", linewidth=1.2, marker=marker)
