"""A run folder's model brought back from checkpoint.pt: any particle's pose picture without re-running.

The napari dock (in a worker thread) and ``bench/posterior_check.py`` use it to browse a finished or
stopped run: each head's candidate, the kept and final pose, the path over the saved epochs, the image,
the projection at the pose and the refined view posterior, all scored against the particle's own half map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.particles import load_particles
from ..geometry.symmetry import group_operators
from ..model.encoder import MultiHeadEncoder
from ..model.likelihood import (
    FrequencyDisk,
    ImageBatch,
    prepare_batch,
    searched_error,
    shift_grid,
    squared_error,
)
from ..model.poses import ParticlePoses
from ..model.volume import HartleyVolume
from ..physics.fourier import frequency_grid_2d, ifftn_centered
from ..physics.shifts import centering_phase
from ..posterior import refined_view_posterior, view_log_posterior
from ..reconstruction import split_halves
from .checkpoint import CheckpointError, load_checkpoint
from .config import RunConfig
from .events import ParticleView, Stage
from .schedule import Schedule

BROWSE_KEYS = (
    "config",
    "stage",
    "epoch",
    "volume",
    "encoder",
    "best_rot",
    "best_shift",
    "best_head",
    "scale",
)
"""What a checkpoint must hold to be browsed (older checkpoints without the input's identity will do)."""


def _polarity_sign(folder: Path, particles, config: RunConfig, device: torch.device) -> float:
    """The sign the run applied to its images: from metrics.json, else measured again as the run did."""
    try:
        sign = json.loads((folder / "metrics.json").read_text())["polarity"]["sign"]
        return float(sign)
    except (OSError, ValueError, KeyError, TypeError):
        from ..polarity import choose_polarity

        return choose_polarity(particles, config.polarity, config.seed, device).sign


class SavedRun:
    """The model of run folder ``folder`` (its checkpoint, particles and saved epochs), read-only."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        state = load_checkpoint(self.folder, BROWSE_KEYS)
        self.config = config = RunConfig.from_dict(state["config"])
        particles = load_particles(config.particles, box=config.box)
        if config.max_particles is not None and config.max_particles < len(particles):
            particles = particles.subset(np.arange(config.max_particles))
        particles.stack.sign = _polarity_sign(self.folder, particles, config, self.device)
        self.particles, self.n, self.box = particles, len(particles), particles.box
        self.stage = Stage(state["stage"])
        self.epoch = int(state["epoch"])
        self.scale = float(state["scale"])
        self.schedule, self.encoder = self._schedule_and_encoder(state["encoder"])
        self.schedule.switch_epoch = state.get("switch_epoch")
        self.schedule.radius_cap = state.get("radius_cap")
        self.disk = FrequencyDisk(self.box, particles.pixel_size, self.device)
        self.offsets = shift_grid(self.schedule.shift_search, device=self.device)
        copies = state["volume"]["mantissa"].shape[0]
        ops = group_operators(config.symmetry)  # the run's imposed point group
        self.volume = HartleyVolume(self.box, torch.zeros(self.box, self.box, self.box), copies, ops)
        self.volume.load_state_dict(state["volume"])
        self.volume.to(self.device).eval()
        self.best_rot, self.best_shift = state["best_rot"].float(), state["best_shift"].float()
        self.best_head = state["best_head"]
        self.poses = None
        if state.get("poses") is not None:
            self.poses = ParticlePoses(self.best_rot, self.best_shift)
            self.poses.load_state_dict(state["poses"])
            self.poses.to(self.device)
        self.halves = np.zeros(self.n, np.int64)
        self.halves[split_halves(self.n, config.seed)[1]] = 1
        self.history = state.get("history", [])

    def _schedule_and_encoder(self, weights: dict) -> tuple[Schedule, MultiHeadEncoder]:
        """The run's schedule and trained encoder; the encoder's size depended on the run's device kind."""
        for kind in ("cpu", "cuda"):
            schedule = Schedule(self.box, self.config, kind, self.n)
            encoder = MultiHeadEncoder(
                schedule.encoder_box, self.config.heads, schedule.encoder_width, max_shift=schedule.max_shift
            )
            try:
                encoder.load_state_dict(weights)
            except RuntimeError:
                continue
            return schedule, encoder.to(self.device).eval()
        raise CheckpointError(
            f"{self.folder / 'checkpoint.pt'}: its encoder does not fit the run's settings. "
            "Fix: open the folder the checkpoint was written in, with the version that wrote it."
        )

    @property
    def n_points(self) -> int:
        """Frequencies the run's likelihood used at its last epoch (the posterior's resolution)."""
        stage = self.stage if self.stage != Stage.DONE else Stage.DECODING
        return self.schedule.points(self.disk, stage, min(self.epoch, self.config.epochs - 1))

    def _copy(self, index: int) -> int:
        return int(self.halves[index]) if self.volume.copies == 2 else 0

    def batch(self, index: int) -> ImageBatch:
        """Particle ``index`` prepared as the run saw it (polarity, scale, frequency disk)."""
        image = torch.from_numpy(np.asarray(self.particles.stack[np.array([index])], np.float32))
        image = image.to(self.device) / self.scale
        return prepare_batch(torch.tensor([index], device=self.device), image, self.particles.ctf, self.disk)

    @torch.no_grad()
    def poses_now(self) -> tuple[np.ndarray, np.ndarray]:
        """Every particle's saved pose: rotations (n, 3, 3) and shifts (n, 2) in pixels."""
        if self.poses is not None:
            rot, shift = self.poses.all_poses()
            return rot.cpu().numpy(), shift.cpu().numpy()
        return self.best_rot.numpy(), self.best_shift.numpy()

    def epoch_path(self, index: int) -> np.ndarray:
        """Particle ``index``'s rotation (T, 3, 3) in each saved epoch of auto-decoding (epochs/*.npz)."""
        start = self.schedule.switch_epoch
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
        pose and, after auto-decoding, the final pose (last)."""
        batch = self.batch(index)
        rot, shift = self.encoder(self.schedule.encoder_images(batch.images))
        rots = [rot[0], self.best_rot[index][None].to(self.device)]
        shifts = [shift[0], self.best_shift[index][None].to(self.device)]
        labels = [f"head {j + 1}" for j in range(self.config.heads)] + ["kept"]
        if self.poses is not None:
            r, s = self.poses(torch.tensor([index], device=self.device))
            rots.append(r)
            shifts.append(s)
            labels.append("pose")
        return torch.cat(rots), torch.cat(shifts), labels

    @torch.no_grad()
    def particle_view(self, index: int, refined: bool = True, pose_anchor: bool = True) -> ParticleView:
        """The pose picture of particle ``index``; ``refined=False`` gives the plain-grid posterior, and
        ``pose_anchor=False`` refines it from the heads' candidates only (not the kept or final pose)."""
        if not 0 <= index < self.n:
            raise IndexError(f"particle {index} is not in this run (0 … {self.n - 1}).")
        batch = self.batch(index)
        copy, n_points = self._copy(index), self.n_points
        rot, shift, labels = self.candidates(index)
        err, shift = searched_error(
            self.volume, batch, rot[None], shift[None], self.offsets, self.disk, n_points, copy
        )
        err, shift = err[0], shift[0]
        win = len(labels) - 1 if self.poses is not None else int(err.argmin())
        sigma2 = max(float(err.min()), 1e-6)
        s_win = shift[win]

        def score(rots: torch.Tensor) -> torch.Tensor:
            b = len(rots)
            many = ImageBatch(
                batch.idx.expand(b),
                batch.images.expand(b, -1, -1),
                batch.spectrum.expand(b, -1),
                batch.ctf.expand(b, -1),
            )
            e = squared_error(self.volume, many, rots, s_win.expand(b, 2), self.disk, n_points, copy)
            return e * n_points / (2 * sigma2)

        zoom = None
        if refined:
            anchors = rot if pose_anchor else rot[: self.config.heads]
            log_post, zoom = refined_view_posterior(score, anchors.cpu().double(), device=self.device)
        else:
            log_post = view_log_posterior(score, nside=self.schedule.posterior_nside, device=self.device)
        return ParticleView(
            index=index,
            image=batch.images[0].cpu().numpy(),
            projection=self.projection(batch, rot[win], s_win, copy),
            candidates=rot.cpu().numpy(),
            candidate_losses=err.cpu().numpy(),
            winner=win,
            path=self.epoch_path(index),
            log_posterior=log_post,
            labels=labels,
            zoom=zoom,
        )

    def projection(self, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, copy: int) -> np.ndarray:
        """The CTF-modulated, shifted projection (L, L) of the particle's half map at one pose."""
        box = self.box
        k = frequency_grid_2d(box, self.device).reshape(-1, 2)
        full_ctf = torch.zeros(box * box, device=self.device)
        full_ctf[self.disk.flat] = batch.ctf[0]
        h = self.volume.slices(rot[None], k, copy)[0].reshape(box, box)
        flipped = torch.roll(torch.flip(h, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
        f = 0.5 * (h + flipped) - 0.5j * (h - flipped)
        f = f.reshape(-1) * full_ctf * centering_phase(k / box, shift[None])[0].conj()
        return ifftn_centered(f.reshape(box, box), 2).real.cpu().numpy() * box
