"""A run's state: its particles at the working box, map, encoder and poses built from the settings, saved to
and restored from a checkpoint, and their optimisers."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..ctf_check import check_ctf
from ..geometry.rotations import random_rotations
from ..model.encoder import MultiHeadEncoder
from ..model.likelihood import (
    ImageBatch,
    prepare_batch,
    shift_grid,
)
from ..model.noise import estimate_noise
from ..model.poses import ParticlePoses
from ..model.prior import prior_weight, signal_power
from ..model.search import so3_grid
from ..model.volume import HartleyVolume
from ..physics.fourier import hartley_centered, radial_shells
from ..polarity import choose_polarity
from ..reconstruction import Accumulator, backproject, split_halves
from .amortized import SemiAmortized
from .events import Stage
from .optimizers import RowAdam, adam

log = logging.getLogger(__name__)


class RunState:
    """The engine's data and parameters (mixed into :class:`~.engine.Engine`, which holds the loop)."""

    def _image_scale(self) -> float:
        """Global standard deviation of a sample of images: every image is divided by it."""
        rng = np.random.default_rng(self.config.seed)
        pick = np.sort(rng.choice(self.n, size=min(self.n, 512), replace=False))
        return float(np.std(self.particles.stack[pick])) or 1.0

    def _load_images(self, idx: np.ndarray) -> torch.Tensor:
        order = np.argsort(idx)
        imgs = np.empty((len(idx), self.box, self.box), np.float32)
        imgs[order] = self.particles.stack[idx[order]]
        return torch.from_numpy(imgs).to(self.device) / self.scale

    def _batch(self, idx: np.ndarray) -> ImageBatch:
        t_idx = torch.as_tensor(idx, device=self.device)
        images = self._load_images(idx)
        return prepare_batch(t_idx, images, self.particles.ctf, self.disk, self.noise.weights(idx))

    def _signal_prior(self) -> torch.Tensor | None:
        """Exploration maps' prior term noise/τ² per shell, from a sample of images (None: no level)."""
        if self.noise.level is None:
            return None
        rng = np.random.default_rng([self.config.seed, 11])
        pick = np.sort(rng.choice(self.n, size=min(self.n, 1000), replace=False))
        batches = (self._batch(pick[s : s + 256]) for s in range(0, len(pick), 256))
        return prior_weight(signal_power(batches, self.disk, self.noise.level), self.noise.level)

    def _initial_volume(self, generator: torch.Generator, copies: int) -> HartleyVolume:
        """Exponent from the data's radial spectrum; mantissa from a random-pose reconstruction (a blob).

        With two copies (independent halves), each copy's blob comes from its own half's particles.
        """
        rot = random_rotations(self.n, generator).numpy()
        shells = radial_shells(self.box, 3, self.device).reshape(-1)
        blobs, exponents = [], []
        for c in range(copies):
            members = np.flatnonzero(self.halves.cpu().numpy() == c) if copies == 2 else np.arange(self.n)
            idx = members[: 1024 // copies]
            blob = backproject(self.particles, rot, np.zeros((self.n, 2)), indices=idx, device=self.device)
            # Volume units: its slices equal the orthonormal spectra of images divided by ``scale``.
            blob = torch.from_numpy(blob).to(self.device) / (self.scale * self.box)
            h = hartley_centered(blob, 3)
            power = torch.zeros(int(shells.max()) + 1, device=self.device)
            power.index_add_(0, shells, h.reshape(-1) ** 2)
            count = torch.zeros_like(power).index_add_(0, shells, torch.ones_like(h).reshape(-1))
            rms = (power / count.clamp_min(1)).sqrt().clamp_min(1e-8)
            blobs.append(blob)
            exponents.append(torch.log(rms)[shells].reshape(h.shape))
        volume = HartleyVolume(self.box, torch.stack(exponents), copies, self.symmetry).to(self.device)
        for c, blob in enumerate(blobs):
            volume.set_from_real_space(blob, copy=c)
        return volume

    def _build(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.polarity = choose_polarity(self.particles, cfg.polarity, cfg.seed, self.device)
        self.particles.stack.sign = self.polarity.sign  # every image (and map) read from here on
        self.ctf_check = check_ctf(self.particles, seed=cfg.seed, device=self.device)
        if not self.ctf_check.consistent:
            log.warning("%s: %s", cfg.particles, self.ctf_check.summary())
        self.scale = self._image_scale()
        self.noise = estimate_noise(self.particles, self.scale, self.disk.radius, cfg.noise_model, cfg.seed)
        exploring = self.schedule.explore_prior and self.schedule.explore_epochs > 0
        self.prior = self._signal_prior() if exploring else None  # only exploration's maps use it
        self.encoder = MultiHeadEncoder(
            self.schedule.encoder_box,
            cfg.heads,
            self.schedule.encoder_width,
            max_shift=self.schedule.max_shift,
        ).to(self.device)
        self.encoder = self.dp.share_batch_statistics(self.encoder)
        _, half_b = split_halves(self.n, cfg.seed)
        self.halves = torch.zeros(self.n, dtype=torch.long)
        self.halves[torch.from_numpy(half_b)] = 1  # the same halves as the half maps written out
        self.halves = self.halves.to(self.device)
        self.halves_np = self.halves.cpu().numpy()
        self.semi = SemiAmortized(self.n, self.halves_np, cfg.explore_subset, cfg.heads, cfg.seed)
        # Gold standard: with half maps, the two halves are explored independently from the start and
        # share nothing until half B's map is aligned onto half A's (paper path: split at the switch).
        independent = cfg.half_maps and self.schedule.explore_epochs > 0
        self.volume = self._initial_volume(gen, 2 if independent else 1)
        self.enc_opt = adam(self.encoder.parameters(), self.schedule.encoder_lr, self.device)
        self.vol_opt = adam(self.volume.parameters(), self.schedule.volume_lr_encoding, self.device)
        self.offsets = shift_grid(self.schedule.shift_search, device=self.device)
        self.grids = [so3_grid(*grid).to(self.device) for grid in self.schedule.explore_grids]
        self.explore_sums: list = [None] * self.volume.copies
        self.halves_aligned = not independent
        self.agreement: dict | None = None  # how well the independent halves agreed once aligned
        self.research_moved: float | None = None  # share of particles the global re-search moved
        self.poses: ParticlePoses | None = None
        self.pose_opt = None
        self.best_rot = torch.eye(3).repeat(self.n, 1, 1)
        self.best_shift = torch.zeros(self.n, 2)
        self.best_head = torch.full((self.n,), -1, dtype=torch.long)
        self.prev_rot = None
        self.prev_head = None
        self.stage = Stage.EXPLORING if self.schedule.explore_epochs else Stage.ENCODING
        self.epoch = 0
        self.pos = 0
        self.perm = None
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.switch_reason = ""

    # ------------------------------------------------------------------------------------ checkpoint
    def _state(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "input": self.identity,
            "stage": self.stage.value,
            "epoch": self.epoch,
            "pos": self.pos,
            "switch_epoch": self.schedule.switch_epoch,
            "radius_cap": self.schedule.radius_cap,
            "reference_fsc": self.schedule.reference_fsc,
            "explore_sums": self.explore_sums,
            "perm": self.perm,
            "step": self.step,
            "elapsed": self.elapsed,
            "scale": self.scale,
            "encoder": self.encoder.state_dict(),
            "enc_opt": self.enc_opt.state_dict(),
            "volume": self.volume.state_dict(),
            "vol_opt": self.vol_opt.state_dict(),
            "poses": None if self.poses is None else self.poses.state_dict(),
            "pose_opt": None if self.pose_opt is None else self.pose_opt.state_dict(),
            "best_rot": self.best_rot,
            "best_shift": self.best_shift,
            "best_head": self.best_head,
            "prev_rot": self.prev_rot,
            "prev_head": self.prev_head,
            "history": self.history,
            "switch_reason": self.switch_reason,
            "halves_aligned": self.halves_aligned,
            "agreement": self.agreement,
            "research_moved": self.research_moved,
            "semi": self.semi.state(),
            "rng": torch.get_rng_state(),
        }

    def _restore(self, st: dict) -> None:
        self.stage = Stage(st["stage"])
        self.epoch, self.pos, self.perm = st["epoch"], st["pos"], st["perm"]
        self.schedule.switch_epoch, self.schedule.radius_cap = st["switch_epoch"], st["radius_cap"]
        self._follow_fsc(st.get("reference_fsc"))
        self.explore_sums = [
            None if acc is None else Accumulator(acc.num.to(self.device), acc.den.to(self.device))
            for acc in st["explore_sums"]
        ]
        self.step, self.elapsed, self.scale = st["step"], st["elapsed"], st["scale"]
        self.encoder.load_state_dict(st["encoder"])
        self.enc_opt.load_state_dict(st["enc_opt"])
        if st["volume"]["mantissa"].shape[0] != self.volume.copies:
            self.volume.split()
            self.vol_opt = self._volume_optimizer()
        self.volume.load_state_dict(st["volume"])
        self.vol_opt.load_state_dict(st["vol_opt"])
        self.best_rot, self.best_shift, self.best_head = st["best_rot"], st["best_shift"], st["best_head"]
        self.prev_rot, self.prev_head = st["prev_rot"], st["prev_head"]
        if st["poses"] is not None:
            self.poses = ParticlePoses(self.best_rot, self.best_shift).to(self.device)
            self.poses.load_state_dict(st["poses"])
            self.pose_opt = self._pose_optimizer()
            self.pose_opt.load_state_dict(st["pose_opt"])
        self.history = st["history"]
        self.switch_reason = st["switch_reason"]
        self.halves_aligned, self.agreement = st["halves_aligned"], st["agreement"]
        self.research_moved = st["research_moved"]
        self.semi.restore(st.get("semi"))
        torch.set_rng_state(st["rng"])

    def _volume_optimizer(self) -> torch.optim.Optimizer:
        lr = (
            self.schedule.volume_lr_decoding
            if self.stage == Stage.DECODING
            else self.schedule.volume_lr_encoding
        )
        return adam(self.volume.parameters(), lr, self.device)

    def _pose_optimizer(self) -> torch.optim.Optimizer:
        assert self.poses is not None
        return RowAdam(
            [
                {"params": [self.poses.omega.weight], "lr": self.schedule.rotation_lr},
                {"params": [self.poses.shift.weight], "lr": self.schedule.shift_lr},
            ]
        )

    # ------------------------------------------------------------------------------------ the stages
