"""A run folder opened for browsing: its :class:`~.run_model.RunModel` from checkpoint.pt and its saved
epochs, and any particle's pose picture without re-running.

The napari run explorer (in a worker thread) and ``bench/posterior_check.py`` use it: each head's
candidate, the kept and final pose, the path over the saved epochs, the image, the projection at the pose
and the refined view posterior, all drawn by ``particle_view.py`` from the model as the live run does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..geometry.symmetry import framed_operators
from .particle_view import scored_view
from .run_model import RunModel


class SavedRun:
    """Run folder ``folder``, read-only: ``model`` is the run as its checkpoint saved it."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        self.folder = Path(folder)
        self.model = RunModel.from_checkpoint(self.folder, device)
        self._detected = _detected_symmetry(self.folder)

    def symmetry(self) -> tuple[str, np.ndarray] | None:
        """The group whose mates the viewer marks: the imposed one, else the one detected in the final half
        maps (its operators in the map's frame); None for C1."""
        return self.model.imposed_symmetry() or self._detected

    @property
    def n(self) -> int:
        """How many particles the run has."""
        return self.model.n

    def epoch_path(self, index: int) -> np.ndarray:
        """Particle ``index``'s rotation (T, 3, 3) in each saved epoch of auto-decoding (epochs/*.npz)."""
        start = self.model.schedule.switch_epoch
        path = []
        for file in sorted((self.folder / "epochs").glob("epoch_*.npz")):
            epoch = int(file.stem.split("_")[-1])
            if start is None or epoch < start:
                continue
            try:
                with np.load(file) as saved:
                    path.append(np.asarray(saved["rotations"][index], np.float32).reshape(3, 3))
            except Exception:  # an unreadable epoch (already named when the folder was read) leaves a gap
                continue
        return np.asarray(path, np.float32).reshape(-1, 3, 3)

    @torch.no_grad()
    def candidates(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Rotations (C, 3, 3), shifts (C, 2) and labels of the particle's candidates: each head's, the kept
        pose (once there is one) and, after auto-decoding, the final pose (last)."""
        m = self.model
        batch = m.batch(np.array([index]))
        rot, shift = m.encoder(m.encoder_input(batch))
        rots, shifts = [rot[0]], [shift[0]]
        labels = [f"head {j + 1}" for j in range(m.config.heads)]
        if int(m.best_head[index]) >= 0:  # a kept pose (none before the first epoch without exploration)
            rots.append(m.best_rot[index][None].to(m.device))
            shifts.append(m.best_shift[index][None].to(m.device))
            labels.append("kept")
        if m.poses is not None:
            r, s = m.poses(torch.tensor([index], device=m.device))
            rots.append(r)
            shifts.append(s)
            labels.append("pose")
        return torch.cat(rots), torch.cat(shifts), labels

    def particle_view(self, index: int, refined: bool = True, pose_anchor: bool = True):
        """The pose picture of particle ``index``; ``refined=False`` gives the plain-grid posterior, and
        ``pose_anchor=False`` refines it from the heads' candidates only (not the kept or final pose)."""
        if not 0 <= index < self.n:
            raise IndexError(f"particle {index} is not in this run (0 … {self.n - 1}).")
        rot, shift, labels = self.candidates(index)
        return scored_view(
            self.model,
            index,
            (rot, shift, labels),
            winner=len(labels) - 1 if self.model.poses is not None else None,
            path=self.epoch_path(index),
            posterior="refined" if refined else "grid",
            anchors=rot if pose_anchor else rot[: self.model.config.heads],
            symmetry=self.symmetry(),
        )


def _detected_symmetry(folder: Path) -> tuple[str, np.ndarray] | None:
    """The group a finished run detected (metrics.json ``final.symmetry``) with its operators (G, 3, 3) in
    the map's frame; None for C1, or when the run has no such record."""
    try:
        found = json.loads((folder / "metrics.json").read_text())["final"]["symmetry"]
        group, frame = found["group"], found["frame"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if group == "C1" else (group, framed_operators(group, frame))
