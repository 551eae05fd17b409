"""The "Pose posterior" dock: one particle's image, best projection and view-direction posterior.

The sky map is Mollweide; each encoder head's candidate view is a marker in the head's colour, the
winning head is ringed, and in auto-decoding the optimised pose is drawn with its path. Below it, a
gnomonic zoom on the mode (fine HEALPix pixels, nside 32) shows every candidate and the path near it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine.events import ParticleView, Snapshot, Stage
from ._hub import hub_for
from ._layout import dock_in_tabs, scrolled
from ._sky import (
    direction_lonlat_deg,
    gnomonic_raster,
    gnomonic_xy,
    lonlat,
    sky_raster,
    sky_rotation,
    split_at_wraps,
)

HEAD_COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "gold",
)
LOG_RANGE = 20.0  # shown span of the log posterior below its maximum
ZOOM_HALF_WIDTH_DEG = 8.0  # the zoomed view spans ±this around the mode


def head_colour(head: int) -> str:
    """The colour of encoder head `head` (0-based), shared by every cryoSPIN plot."""
    return HEAD_COLOURS[head % len(HEAD_COLOURS)]


def _degrees_box(limit: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(-limit, limit)
    box.setSingleStep(15.0)
    box.setSuffix("°")
    box.setDecimals(0)
    box.setMinimumWidth(80)
    box.setWrapping(limit == 180.0)
    return box


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """The rotation angle between two rotation matrices (3, 3), in degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1.0) / 2.0, -1.0, 1.0))))


SHOWN_NAMES = {"kept": "kept pose", "pose": "final pose"}
"""How the engine's candidate labels read in the legends and the caption."""
HEADS_TITLE = "heads from 1 (poses.star's cryospinHead from 0)"


def candidate_label(view, index: int) -> str:
    """The name of a candidate ("head 2", "kept pose", "final pose", "grid 1"); "head N" when the engine
    gave no labels."""
    labels = getattr(view, "labels", None) or []
    label = labels[index] if index < len(labels) else f"head {index + 1}"
    return SHOWN_NAMES.get(label, label)


def _heads_title(view) -> str | None:
    """The legend's title when heads are among the candidates: how their numbers map to poses.star's."""
    names = [candidate_label(view, k) for k in range(len(view.candidates))]
    return HEADS_TITLE if any(name.startswith("head ") for name in names) else None


class PosteriorView(QWidget):
    """Pick a particle; see its pose candidates per head on the sky of view directions."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.hub = hub_for(napari_viewer)
        self.view: ParticleView | None = None
        self.stage: Stage | None = None
        self.head_artists: list = []
        self.mate_artist = None  # the winner's symmetry mates on the sky, when the run has a group

        self.particle_spin = QSpinBox()
        self.particle_spin.setRange(0, 10_000_000)
        self.particle_spin.setValue(self.hub.particle)
        self.particle_slider = QSlider(Qt.Orientation.Horizontal)
        self.particle_slider.setRange(0, 0)
        self.follow_check = QCheckBox("follow the stack layer's slice")
        self.follow_check.setChecked(True)
        self.lon_spin, self.lat_spin = _degrees_box(180.0), _degrees_box(90.0)
        self.centre_button = QPushButton("Centre on winner")
        self.info = QLabel("Start a run to see this particle's pose candidates.")
        self.info.setWordWrap(True)
        self.images_figure = Figure(figsize=(5.0, 2.4), layout="constrained")
        self.images_canvas = FigureCanvasQTAgg(self.images_figure)
        self.images_canvas.setFixedHeight(220)
        self.figure = Figure(figsize=(5.0, 3.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(340)
        self.zoom_figure = Figure(figsize=(5.0, 2.8), layout="constrained")
        self.zoom_canvas = FigureCanvasQTAgg(self.zoom_figure)
        self.zoom_canvas.setMinimumHeight(260)
        self.zoom_artists: list = []

        controls = QGridLayout()
        controls.addWidget(QLabel("particle"), 0, 0)
        controls.addWidget(self.particle_spin, 0, 1)
        controls.addWidget(self.particle_slider, 0, 2, 1, 3)
        controls.addWidget(self.follow_check, 1, 0, 1, 5)
        controls.addWidget(QLabel("centre lon"), 2, 0)
        controls.addWidget(self.lon_spin, 2, 1)
        controls.addWidget(QLabel("lat"), 2, 2)
        controls.addWidget(self.lat_spin, 2, 3)
        controls.addWidget(self.centre_button, 2, 4)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(controls)
        layout.addWidget(self.info)
        layout.addWidget(self.images_canvas)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.zoom_canvas)
        QVBoxLayout(self).addWidget(scrolled(content))
        dock_in_tabs(self)

        self.particle_spin.valueChanged.connect(self._on_particle)
        self.particle_slider.valueChanged.connect(self.particle_spin.setValue)
        self.lon_spin.valueChanged.connect(self.redraw)
        self.lat_spin.valueChanged.connect(self.redraw)
        self.centre_button.clicked.connect(self.centre_on_winner)
        self.hub.snapshot.connect(self.on_snapshot)
        self.hub.chosen.connect(self.particle_spin.setValue)
        self.follow_check.toggled.connect(self._follow_stack)
        napari_viewer.dims.events.current_step.connect(self._follow_stack)
        napari_viewer.dims.events.ndisplay.connect(self._follow_stack)
        napari_viewer.layers.selection.events.active.connect(self._follow_stack)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._sync_range)
        self._sync_range()
        if self.hub.last is not None:
            self.on_snapshot(self.hub.last)
        else:
            self.redraw()

    def select_particle(self, index: int) -> None:
        """Show particle `index` (the spin box, slider and run follow)."""
        self.particle_spin.setValue(index)

    def _on_particle(self, index: int) -> None:
        self.particle_slider.blockSignals(True)
        self.particle_slider.setValue(index)
        self.particle_slider.blockSignals(False)
        self._move_the_slice(index)
        if index != self.hub.particle:
            self.hub.select_particle(index)
        if self.view is not None and self.view.index != index:
            self.info.setText(f"Particle {index}: waiting for the next snapshot of the run…")

    def _stack_layer(self):
        """The particle stack whose slice is followed: the selected one, else the first one open."""
        stacks = [
            layer for layer in self.viewer.layers if layer.metadata.get("particles_path") and layer.ndim == 3
        ]
        active = self.viewer.layers.selection.active
        return active if active in stacks else next(iter(stacks), None)

    def _following(self):
        """The stack layer to keep in step with, when following is on and napari shows slices (2D)."""
        if not self.follow_check.isChecked() or self.viewer.dims.ndisplay != 2:
            return None
        return self._stack_layer()

    def _sync_range(self, _event=None) -> None:
        stacks = [layer for layer in self.viewer.layers if layer.metadata.get("particles_path")]
        top = max((layer.data.shape[0] for layer in stacks), default=1) - 1
        self.particle_slider.setRange(0, max(top, 0))
        self._follow_stack()

    def _follow_stack(self, _event=None) -> None:
        layer = self._following()
        if layer is None:
            return
        index = round(float(layer.world_to_data(self.viewer.dims.point)[0]))
        self.particle_spin.setValue(int(np.clip(index, 0, layer.data.shape[0] - 1)))

    def _move_the_slice(self, index: int) -> None:
        """Show particle ``index``'s slice in napari too, so that its slider and this dock agree."""
        layer = self._following()
        if layer is None or not 0 <= index < layer.data.shape[0]:
            return
        axis = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(axis, float(layer.data_to_world((index, 0, 0))[0]))

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Draw the particle view if it is the one asked for (keeping its last posterior)."""
        view = snapshot.particle
        if view is None or view.index != self.particle_spin.value():
            return
        previous = self.view
        if view.log_posterior is None and previous is not None and previous.index == view.index:
            view = replace(view, log_posterior=previous.log_posterior, zoom=previous.zoom)
        self.view, self.stage = view, snapshot.stage
        self.redraw()

    def centre_on_winner(self) -> None:
        """Rotate the sky so that the winning candidate's view sits at the centre."""
        if self.view is None:
            return
        lon, lat = direction_lonlat_deg(self.view.candidates[self.view.winner][:, 2])
        self.lon_spin.blockSignals(True)
        self.lon_spin.setValue(lon)
        self.lon_spin.blockSignals(False)
        self.lat_spin.setValue(lat)

    def redraw(self, _value=None) -> None:
        """Redraw images and sky from the current particle view and sky centre."""
        self.figure.clear()
        self.images_figure.clear()
        self.zoom_figure.clear()
        self.head_artists = []
        self.zoom_artists = []
        self.mate_artist = None
        image_ax, projection_ax = self.images_figure.subplots(1, 2)
        sky_ax = self.figure.add_subplot(projection="mollweide")
        if self.view is None:
            for ax in (image_ax, projection_ax):
                ax.set_axis_off()
            self._style_sky(sky_ax)
        else:
            self._draw_images(image_ax, projection_ax)
            self._draw_sky(sky_ax)
            self._draw_zoom()
            self.info.setText(self._describe())
        self.images_canvas.draw_idle()
        self.canvas.draw_idle()
        self.zoom_canvas.draw_idle()

    def _decoding(self) -> bool:
        """Auto-decoding, or a finished run whose last view was a single optimised pose."""
        return self.stage == Stage.DECODING or (self.stage == Stage.DONE and len(self.view.candidates) == 1)

    def _draw_images(self, image_ax, projection_ax) -> None:
        view = self.view
        decoding = self._decoding()
        titles = (
            f"particle {view.index}",
            "projection at pose" if decoding else f"best: {candidate_label(view, view.winner)}",
        )
        for ax, image, title in zip(
            (image_ax, projection_ax), (view.image, view.projection), titles, strict=True
        ):
            low, high = np.percentile(image, [1.0, 99.0])
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, origin="upper")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])

    def _draw_sky(self, ax) -> None:
        view = self.view
        rotation = sky_rotation(self.lon_spin.value(), self.lat_spin.value())
        if view.log_posterior is not None:
            lon, lat, values = sky_raster(view.log_posterior, rotation)
            mesh = ax.pcolormesh(
                lon,
                lat,
                values - values.max(),
                cmap="bone",
                vmin=-LOG_RANGE,
                vmax=0.0,
                shading="flat",
                rasterized=True,
            )
            bar = self.figure.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.6, pad=0.02, aspect=30)
            bar.set_label("log posterior of the view, relative to its maximum", fontsize=8)
            bar.set_ticks(np.arange(-LOG_RANGE, 0.1, 5.0))
            bar.ax.tick_params(labelsize=7)
        if self._decoding():
            self._draw_decoding(ax, rotation)
        else:
            self._draw_path(ax, rotation)
            self._draw_heads(ax, rotation)
        self._draw_mates(ax, rotation)
        self._style_sky(ax)
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.04),
            ncol=4,
            fontsize=7,
            title=_heads_title(view),
            title_fontsize=7,
            frameon=False,
            handletextpad=0.2,
            columnspacing=0.8,
        )

    def _draw_heads(self, ax, rotation: np.ndarray) -> None:
        view = self.view
        lon, lat = lonlat(view.candidates[:, :, 2], rotation)
        for head in range(len(view.candidates)):
            won = head == view.winner
            label = candidate_label(view, head) + (" (winner)" if won else "")
            artist = ax.scatter(
                lon[head],
                lat[head],
                s=150 if won else 60,
                color=head_colour(head),
                edgecolors="black",
                linewidths=0.8,
                zorder=4 if won else 3,
                label=label,
            )
            self.head_artists.append(artist)
        for size, colour, width in ((460, "black", 3.5), (460, "white", 1.6)):
            ax.scatter(
                lon[view.winner],
                lat[view.winner],
                s=size,
                facecolors="none",
                edgecolors=colour,
                linewidths=width,
                zorder=5,
            )

    def _draw_mates(self, ax, rotation: np.ndarray) -> None:
        """The winner's symmetry mates (the imposed group, or the one the finished run detected): views as
        good as the winner's, which the posterior cannot tell apart."""
        view = self.view
        if view.mates is None or not len(view.mates):
            return
        lon, lat = lonlat(view.mates[:, :, 2], rotation)
        winner = candidate_label(view, view.winner)
        self.mate_artist = ax.scatter(
            lon,
            lat,
            s=120,
            marker="D",
            facecolors="none",
            edgecolors="white",
            linewidths=1.4,
            zorder=4,
            label=f"{view.mates_group} mates of the {winner}",
        )

    def _draw_path(self, ax, rotation: np.ndarray) -> None:
        """The particle's pose over auto-decoding (steps of a live run, saved epochs of a finished one)."""
        view = self.view
        if not len(view.path):
            return
        path_lon, path_lat = lonlat(view.path[:, :, 2], rotation)
        for number, (lon, lat) in enumerate(split_at_wraps(path_lon, path_lat)):
            ax.plot(
                lon,
                lat,
                color="tab:orange",
                linewidth=1.4,
                marker=".",
                markersize=3,
                zorder=3,
                label="path in auto-decoding" if number == 0 else None,
            )

    def _draw_decoding(self, ax, rotation: np.ndarray) -> None:
        view = self.view
        self._draw_path(ax, rotation)
        lon, lat = lonlat(view.candidates[view.winner][:, 2], rotation)
        artist = ax.scatter(
            lon,
            lat,
            s=260,
            marker="*",
            color="tab:red",
            edgecolors="white",
            linewidths=1.0,
            zorder=5,
            label="current pose",
        )
        self.head_artists.append(artist)

    def _draw_zoom(self) -> None:
        """Gnomonic view of the posterior around its mode, with every candidate and the path near it."""
        view = self.view
        zoom = getattr(view, "zoom", None)
        if zoom is None or view.log_posterior is None:
            return
        ax = self.zoom_figure.add_subplot()
        image, extent = gnomonic_raster(
            view.log_posterior, zoom.nside, zoom.pixels, zoom.log_posterior, zoom.mode, ZOOM_HALF_WIDTH_DEG
        )
        top = float(np.nanmax(image))
        mesh = ax.imshow(
            image - top,
            origin="lower",
            extent=extent,
            cmap="bone",
            vmin=-LOG_RANGE,
            vmax=0.0,
            interpolation="nearest",
        )
        bar = self.zoom_figure.colorbar(mesh, ax=ax, shrink=0.8, pad=0.02)
        bar.set_label("log posterior (rel.)", fontsize=7)
        bar.ax.tick_params(labelsize=7)
        if len(view.path):
            x, y = gnomonic_xy(view.path[:, :, 2], zoom.mode)
            ax.plot(
                x, y, color="tab:orange", linewidth=1.4, marker=".", markersize=4, label="path (saved epochs)"
            )
        x, y = gnomonic_xy(view.candidates[:, :, 2], zoom.mode)
        for k in range(len(view.candidates)):
            label = candidate_label(view, k)
            won = k == view.winner
            pose = label == SHOWN_NAMES["pose"]
            artist = ax.scatter(
                x[k],
                y[k],
                s=200 if pose else (110 if won else 50),
                marker="*" if pose else "o",
                color="tab:red" if pose else head_colour(k),
                edgecolors="white" if pose else "black",
                linewidths=0.8,
                zorder=5 if won else 4,
                label=label + (" (winner)" if won else ""),
            )
            self.zoom_artists.append(artist)
        half = ZOOM_HALF_WIDTH_DEG
        ax.set_xlim(-half, half)
        ax.set_ylim(-half, half)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("° from the mode (gnomonic)", fontsize=8)
        ax.set_title(f"zoom on the mode (nside {zoom.nside})", fontsize=9)
        ax.legend(loc="center left", bbox_to_anchor=(1.25, 0.5), fontsize=7, frameon=False)

    def _style_sky(self, ax) -> None:
        ax.grid(True, color="0.6", linewidth=0.4, alpha=0.6)
        ax.set_xticklabels([])
        ax.tick_params(labelsize=7)
        lon, lat = self.lon_spin.value(), self.lat_spin.value()
        ax.set_title(f"view directions (Mollweide, centre {lon:.0f}°, {lat:.0f}°)", fontsize=9)

    def _describe(self) -> str:
        view = self.view
        if self._decoding():
            return f"Particle {view.index}: auto-decoding, loss {view.candidate_losses[view.winner]:.4g}."
        losses = ", ".join(f"{loss:.3g}" for loss in view.candidate_losses)
        winner = candidate_label(view, view.winner)
        text = f"Particle {view.index}: {winner} wins; losses per candidate: {losses}."
        heads = [k for k in range(len(view.candidates)) if candidate_label(view, k).startswith("head ")]
        if heads and view.winner not in heads:  # the kept (or final) pose beat every head: how far off
            best = view.candidates[view.winner]
            off = ", ".join(
                f"{candidate_label(view, k)} {_angle_deg(view.candidates[k], best):.0f}°" for k in heads
            )
            text += f" No head found this pose; each head's candidate is this far from the {winner}: {off}."
        return text
