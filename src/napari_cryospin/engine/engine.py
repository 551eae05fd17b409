"""The cryoSPIN engine: exploration, auto-encoding, the switch, auto-decoding, as a generator of snapshots.

Exploration (a global soft pose search on a rotation grid, ``model/search.py``) gives the map its first
asymmetric shape and every particle a pose; auto-encoding trains the multi-head encoder against that map
with the winner-takes-all loss, each particle also keeping its best pose so far as a candidate; at the
switch, the best candidate seeds auto-decoding.

``Engine(config).run()`` yields :class:`Snapshot`\\ s at most every ``snapshot_interval_s`` (and at every
epoch end); the consumer may ``send`` a :class:`Command` back (switch now, stop, show a particle). Stop
and every epoch end write an atomic checkpoint; ``config.resume`` continues from it. A consumer that sets
``engine.poll`` (a function returning the next command or None) is also heard between the chunks of the
halves' alignment, the one long stretch without a snapshot (~20 s on a CPU; one-process runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator

import numpy as np
import torch

from ..ctf_check import check_ctf
from ..data.errors import ParticleFileError
from ..data.particles import ParticleSet, load_particles
from ..geometry.rotations import geodesic_distance, random_rotations
from ..geometry.symmetry import group_operators
from ..metrics.alignment import align_maps
from ..model.encoder import MultiHeadEncoder
from ..model.likelihood import (
    FrequencyDisk,
    ImageBatch,
    prepare_batch,
    searched_error,
    shift_grid,
    squared_error,
)
from ..model.noise import estimate_noise
from ..model.poses import ParticlePoses
from ..model.prior import prior_weight, signal_power
from ..model.search import forget, grid_search, insert_weighted, so3_grid
from ..model.volume import HartleyVolume
from ..physics.fourier import frequency_grid_2d, hartley_centered, ifftn_centered, radial_shells
from ..physics.shifts import centering_phase
from ..polarity import choose_polarity
from ..posterior import refined_view_posterior
from ..reconstruction import Accumulator, backproject, solve_map, split_halves
from ..safe_write import write_json
from . import distributed
from .amortized import SemiAmortized, explored_count
from .checkpoint import open_run_folder, read_resume_state, save_checkpoint
from .config import RunConfig
from .device import resolve_device
from .events import Command, ParticleView, Snapshot, Stage
from .inputs import check_enough_particles, input_identity
from .mates import map_twofolds, score_hypotheses
from .optimizers import RowAdam, adam
from .outputs import write_epoch_record, write_results
from .run_folder import write_run_record
from .schedule import Schedule
from .switch import AutoSwitch
from .validity import half_agreement, half_map_mask, radius_at
from .working_box import working_box

log = logging.getLogger(__name__)


class StopRun(Exception):
    """Raised inside the loop when the consumer asked to stop."""


class Engine:
    """One reconstruction run; validates the input when constructed (errors name the file and fix)."""

    def __init__(self, config: RunConfig, views: bool = True):
        """``views``: build the chosen particle's candidates and pose posterior for the snapshots (the dock
        shows them; a headless run has no use for them, and their cost falls on process 0 alone)."""
        self.config = config
        self.views = views
        self.device = torch.device(resolve_device(config.device))
        self.dp = distributed.from_env(self.device)  # one process unless started by torchrun
        self.device = self.dp.device
        particles = load_particles(config.particles, box=config.box)
        particles = particles.at_box(working_box(particles.stack.original_box, config.box, self.device.type))
        if particles.ctf is None:
            raise ParticleFileError(
                f"{particles.path}: a bare stack has no CTF parameters. "
                "Fix: open the RELION .star or cryoSPARC .cs file that describes this stack."
            )
        if config.max_particles is not None and config.max_particles < len(particles):
            particles = particles.subset(np.arange(config.max_particles))
        check_enough_particles(particles, limited=config.max_particles is not None)
        self.particles: ParticleSet = particles
        self.symmetry = group_operators(config.symmetry)  # (n, 3, 3): imposed on every map (C1: identity)
        self.n = len(particles)
        self.box = particles.box
        explored = explored_count(config.explore_subset, self.n)  # exploration's batches follow its size
        self.schedule = Schedule(self.box, config, self.device.type, explored)
        self.disk = FrequencyDisk(self.box, particles.pixel_size, self.device)
        self.out = config.out_dir
        self.identity = input_identity(particles)
        self._folder_lock, self._resume_state = self.dp.main_first(  # before any work; process 0 locks
            lambda: open_run_folder(config, self.identity),  # and prepares the folder
            lambda: (None, read_resume_state(config, self.identity)),
        )
        self._selected = 0
        self._commands: list[Command] = []
        self.poll: Callable[[], Command | None] | None = None  # set by the consumer: see the module docstring
        self._reference_weight: torch.Tensor | None = None  # the pose steps' map filter (_follow_fsc)
        self._reference_mask = torch.from_numpy(half_map_mask(self.box)).to(self.device)  # and their mask

    # ----------------------------------------------------------------------------------------- setup
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
    def _encoder_input(self, batch: ImageBatch) -> torch.Tensor:
        return self.schedule.encoder_images(batch.images)

    def _copy_masks(self, idx: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """(map copy, mask of the batch) for each copy with particles in the batch (one copy: all of them)."""
        if self.volume.copies == 1:
            return [(0, torch.ones_like(idx, dtype=torch.bool))]
        halves = self.halves[idx]
        return [(c, halves == c) for c in (0, 1) if bool((halves == c).any())]

    def _copy_parts(self, batch: ImageBatch) -> list[tuple[int, torch.Tensor, ImageBatch]]:
        """(map copy, mask, sub-batch) for each copy with particles in ``batch``."""
        return [(c, mask, batch.select(mask)) for c, mask in self._copy_masks(batch.idx)]

    def _by_copy(self, batch: ImageBatch, fn, parts: list | None = None) -> list[torch.Tensor]:
        """``fn(sub_batch, copy, mask)`` on each map copy's particles, results scattered back to (B, …);
        ``parts``: the batch's :meth:`_copy_parts` when the caller reuses them (auto-decoding's steps).

        Every particle is scored against its own half's map only: the gold standard depends on it.
        """
        results: list[torch.Tensor] = []
        for c, mask, sub in self._copy_parts(batch) if parts is None else parts:
            out = fn(sub, c, mask)
            out = out if isinstance(out, tuple) else (out,)
            if not results:
                results = [t.new_empty((len(mask), *t.shape[1:])) for t in out]
            for r, t in zip(results, out, strict=True):
                r[mask] = t
        return results

    def _score_candidates(
        self, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, n_points: int, detach: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Errors (B, C) and searched shifts (B, C, 2) of candidate poses (B, C, 3, 3) against each particle's
        own map; ``detach`` lets the gradient reach the poses only."""
        err, best = self._by_copy(
            batch,
            lambda sub, c, m: searched_error(
                self.volume, sub, rot[m], shift[m], self.offsets, self.disk, n_points, c, detach
            ),
        )
        return err, best

    def _exploring_step(self, idx: np.ndarray, n_points: int) -> float:
        """Soft-assign the batch over the grid, fold it into each half's running sums, re-solve the maps."""
        batch = self._batch(idx)
        sch = self.schedule
        errors = []
        for c, mask in self._copy_masks(batch.idx):
            sub = batch.select(mask)
            found = grid_search(
                self.volume,
                sub,
                self.grids[sch.explore_grid(self.epoch)],
                self._explore_centres(sub.idx),
                self.offsets,
                self.disk,
                n_points,
                sch.explore_top_k,
                copy=c,
                temperature=sch.explore_temperature(self.epoch),
                shift_sigma=sch.shift_prior,
            )
            # Each half remembers its share of ``explore_memory``: the same dynamics as one shared map.
            share = self._copy_size(c) / self.semi.size
            new = insert_weighted(sub, found, self.disk, n_points)
            new, count = self.dp.sum_accumulator(new, len(sub.idx))  # the whole batch's, over processes
            new = new.symmetrized(self.symmetry)  # each image also at its mates' poses
            rate = count / min(self._copy_size(c), sch.explore_memory * share)
            self.explore_sums[c] = forget(self.explore_sums[c], new, rate)
            # The sums hold normalised spectra, so the solved map is already in the decoder's units.
            solved = torch.from_numpy(solve_map(self.explore_sums[c], prior=self.prior)).to(self.device)
            self.volume.set_from_real_space(solved, copy=c)
            cpu_idx = sub.idx.cpu()
            self.best_rot[cpu_idx] = found.rotations[:, 0].cpu()
            self.best_shift[cpu_idx] = found.shifts[:, 0].cpu()
            self.best_head[cpu_idx] = self.config.heads
            errors.append(found.errors[:, 0])
        return float(torch.cat(errors).mean())

    def _explore_centres(self, idx: torch.Tensor) -> torch.Tensor:
        """Where exploration's shift search is centred for particles ``idx`` (B, 2) px: each particle's last
        shift when the schedule has a shift prior, else the box centre.

        The centre is pulled in to at most the search radius from the box centre, so that the window always
        holds the centre: a shift that wandered while the map was poor can come back (on ribosome70s, 25
        particles had drifted to 5–11 px, true ≤ 4 px, and ended > 30° off), and picks out to twice the
        radius can still be followed.
        """
        if self.schedule.shift_prior is None:
            return torch.zeros(len(idx), 2, device=self.device)
        last = self.best_shift[idx.cpu()]
        radius = self.schedule.shift_search
        scale = (radius / last.norm(dim=-1, keepdim=True).clamp_min(1e-6)).clamp(max=1.0)
        return (last * scale).to(self.device)

    def _copy_size(self, copy: int) -> int:
        """How many particles train map copy ``copy`` (of the explored subset with ``explore_subset``)."""
        pool = self.semi.explored
        return len(pool) if self.volume.copies == 1 else int((self.halves_np[pool] == copy).sum())

    @torch.no_grad()
    def _align_halves(self) -> None:
        """Bring half B's map and poses into half A's frame and record how well the two maps agree.

        The halves were explored independently (each could have settled in its own orientation or hand), so
        their agreement after alignment is evidence that the structure is in the data, not in the start.
        """
        if self.halves_aligned:
            return
        a = self.volume.real_space(0).cpu().numpy()
        b = self.volume.real_space(1).cpu().numpy()
        between = None if self.dp.active else self._stop_if_asked  # processes search apart: no stop there
        change = align_maps(b, a, seed=self.config.seed, map_fn=self.dp.map, between=between)  # a hand each
        self.volume.set_from_real_space(torch.from_numpy(change.aligned).to(self.device), copy=1)
        members = (self.halves == 1).cpu()
        rot, shift = change.poses(self.best_rot[members].double().numpy(), self.best_shift[members].numpy())
        self.best_rot[members] = torch.from_numpy(rot).float()
        self.best_shift[members] = torch.from_numpy(shift).float()
        if self.prev_rot is not None:  # a change of frame is not a change of pose (auto-switch's measure)
            self.prev_rot[members] = self.best_rot[members].clone()
        self.agreement = half_agreement(a, change.aligned, self.schedule.explored_radius(self.epoch))
        self.explore_sums = [None, None]
        self.halves_aligned = True
        log.info("halves aligned: %s", self.agreement["summary"])

    def _stop_if_asked(self) -> None:
        """Raise StopRun when a stop was asked meanwhile (through ``poll``), between a long computation's
        chunks; the state is still the one the last epoch ended with, so the checkpoint resumes from there."""
        if self.poll is not None:
            self._handle(self.poll())
        if any(c.kind == "stop" for c in self._commands):
            raise StopRun

    def _with_kept(
        self, idx: np.ndarray, rot: torch.Tensor, shift: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append each particle's kept pose (its best so far) to the heads' candidates (B, M + 1, …).

        Also returns which particles have a kept pose (none before the first epoch without exploration).
        """
        cpu_idx = torch.as_tensor(idx)
        kept_rot = self.best_rot[cpu_idx].to(self.device)[:, None]
        kept_shift = self.best_shift[cpu_idx].to(self.device)[:, None]
        has = (self.best_head[cpu_idx] >= 0).to(self.device)
        return torch.cat([rot, kept_rot], 1), torch.cat([shift, kept_shift], 1), has

    def _best_candidates(
        self, idx: np.ndarray, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, n_points: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score the heads' poses (B, M, …) and the kept pose; returns the errors (B, M + 1) (grad reaching
        the heads), the candidates with searched shifts (B, M + 1, …) and each particle's winner (B,)."""
        cand_rot, cand_shift, has = self._with_kept(idx, rot, shift)
        err, cand_shift = self._score_candidates(batch, cand_rot, cand_shift, n_points, detach=True)
        with torch.no_grad():
            scored = err.detach().clone()
            scored[:, -1] = torch.where(has, scored[:, -1], torch.full_like(scored[:, -1], float("inf")))
            win = scored.argmin(1)
        return err, cand_rot.detach(), cand_shift.detach(), win

    def _encoding_step(self, idx: np.ndarray, n_points: int) -> float:
        """WTA over the heads trains the encoder; the map learns from each particle's best candidate.

        The heads' errors see the map detached, so heads that are still wrong do not blur it; the
        particle's kept pose competes with the heads and is replaced when a head beats it.
        """
        batch = self._batch(idx)
        self.encoder.train()
        heads = self.config.heads
        rot, shift = self.encoder(self._encoder_input(batch))
        err, cand_rot, cand_shift, win = self._best_candidates(idx, batch, rot, shift, n_points)
        encoder_loss = err[:, :heads].min(dim=1).values.mean()
        ar = torch.arange(len(idx), device=self.device)
        win_rot, win_shift = cand_rot[ar, win], cand_shift[ar, win]
        with self.volume.shared():
            map_loss = self._squared_error(batch, win_rot, win_shift, n_points).mean()
        self.enc_opt.zero_grad(set_to_none=True)
        self.vol_opt.zero_grad(set_to_none=True)
        (encoder_loss + map_loss).backward()
        self.dp.average_gradients(self.encoder, self.volume)
        self.enc_opt.step()
        self.vol_opt.step()
        cpu_idx = torch.as_tensor(idx)
        self.best_rot[cpu_idx] = win_rot.cpu()
        self.best_shift[cpu_idx] = win_shift.cpu()
        self.best_head[cpu_idx] = win.cpu()
        return float(map_loss.detach())

    def _squared_error(
        self,
        batch: ImageBatch,
        rot: torch.Tensor,
        shift: torch.Tensor,
        n_points: int,
        detach: bool = False,
        parts: list | None = None,
    ) -> torch.Tensor:
        """Each particle's mean squared residual (B,) at one pose, against its own map (``detach``: the
        gradient reaches the poses only; ``parts`` as in :meth:`_by_copy`)."""
        return self._by_copy(
            batch,
            lambda sub, c, m: squared_error(
                self.volume, sub, rot[m], shift[m], self.disk, n_points, c, detach
            ),
            parts,
        )[0]

    def _decoding_step(self, idx: np.ndarray, n_points: int) -> float:
        assert self.poses is not None and self.pose_opt is not None
        if len(idx) == 0:  # this process's half has no particle in the batch: its map still takes Adam's step
            for p in self.volume.parameters():
                p.grad = torch.zeros_like(p)
            self.dp.average_gradients(self.volume)
            self.vol_opt.step()
            return 0.0
        batch = self._batch(idx)
        t_idx = batch.idx
        parts = self._copy_parts(batch)  # the same sub-batches for all six steps
        with self.volume.frozen(self._reference_weight, self._reference_mask):  # fixed, masked, filtered
            for _ in range(self.schedule.pose_steps):
                rot, shift = self.poses(t_idx)
                loss = self._squared_error(batch, rot, shift, n_points, detach=True, parts=parts).mean()
                self.pose_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.dp.scale_local_gradients(self.poses)
                self.pose_opt.step()
        with torch.no_grad():
            rot, shift = self.poses(t_idx)
        with self.volume.shared():
            loss = self._squared_error(batch, rot, shift, n_points, parts=parts).mean()
        self.vol_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.dp.average_gradients(self.volume)
        self.vol_opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def _switch_to_decoding(self, reason: str) -> None:
        """One pass picks every particle's best candidate (heads and kept pose); it seeds auto-decoding.

        From exploration, the kept poses are the candidates (the encoder has not been trained yet).
        """
        if self.stage == Stage.EXPLORING:
            self._align_halves()
        if self.stage == Stage.ENCODING:
            self.encoder.eval()
            n_points = self.schedule.points(self.disk, Stage.ENCODING, self.epoch)
            block = self.dp.block(self.n)  # each process its block, gathered below
            for start in range(0, len(block), self.config.batch_size * 4):
                idx = block[start : start + self.config.batch_size * 4]
                batch = self._batch(idx)
                rot, shift = self.encoder(self._encoder_input(batch))
                err, rot, shift, win = self._best_candidates(idx, batch, rot, shift, n_points)
                self.semi.note(idx, err, rot, n_points)  # the unexplored particles' head margins
                ar = torch.arange(len(idx), device=self.device)
                self.best_rot[idx] = rot[ar, win].cpu()
                self.best_shift[idx] = shift[ar, win].cpu()
                self.best_head[idx] = win.cpu()
            self.dp.sync_blocks(distributed.particle_state(self), self.n)
        self.semi.pose_rest(self, encoded=self.stage == Stage.ENCODING)  # audit and unsure: grid search
        self.schedule.switch_epoch = self.epoch
        self.explore_sums = [None] * self.volume.copies
        self.stage = Stage.DECODING
        self.switch_reason = reason
        self.poses = ParticlePoses(self.best_rot, self.best_shift).to(self.device)
        self.pose_opt = self._pose_optimizer()
        if self.config.half_maps:
            self.volume.split()
        self.vol_opt = self._volume_optimizer()
        log.info("switched to auto-decoding at epoch %d: %s", self.epoch, reason)

    def _fine_grid_search(
        self, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, n_points: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Against each particle's own half map: the error (B,) of its pose (rot (B, 3, 3), shift (B, 2) px)
        and the best fine-grid pose's error (B,), rotation (B, 3, 3) and shift (B, 2)."""

        def search(sub: ImageBatch, c: int, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
            now = squared_error(self.volume, sub, rot[m], shift[m], self.disk, n_points, c)
            found = grid_search(  # around the particle's current shift
                self.volume, sub, self.grids[-1], shift[m], self.offsets, self.disk, n_points, 1, copy=c
            )
            return now, found.errors[:, 0], found.rotations[:, 0], found.shifts[:, 0]

        now, err, grid_rot, grid_shift = self._by_copy(batch, search)
        return now, err, grid_rot, grid_shift

    def _reseed(self, which: torch.Tensor, rot: torch.Tensor, shift: torch.Tensor) -> None:
        """Restart particles ``which`` from new poses; their Adam moments are zeroed."""
        assert self.poses is not None and self.pose_opt is not None
        self.poses.reseed(which, rot, shift)
        for state in self.pose_opt.state.values():
            for moment in state.values():
                if torch.is_tensor(moment) and moment.dim() == 2:
                    moment[which] = 0.0

    @torch.no_grad()
    def _research_poses(self) -> None:
        """Give every particle its best mate (``mates.py``), or else the best fine-grid pose, against its
        half map whenever that fits better.

        The mates (in-plane 180°, the view from the other side, the map's near 2-folds) are scored at the
        current radius against the map the pose steps see: a flipped particle's right pose is ~180° away,
        beyond any local step, and the grid (15° apart, at exploration's lower radius, where an elongated
        map looks alike both ways) lands a few degrees off it, or beside the flip. The grid pose is scored
        at exploration's top radius, where a grid pose ~7° off is still inside the basin; for a particle just
        moved to a mate it must also beat the mate as the mate was scored (on a tiny run with 30 % of the
        poses put on a mate, the mates brought 59 of 60 back, and the grid's test alone then moved 31 of
        them away again, 17 to 95–180° off). The particles that move continue by local refinement.
        """
        assert self.poses is not None
        n_points = self.schedule.points(self.disk, Stage.EXPLORING, self.schedule.explore_epochs - 1)
        mate_points = self.schedule.points(self.disk, Stage.DECODING, self.epoch)
        twofolds = map_twofolds(self)
        moved = flipped = 0
        block = self.dp.block(self.n)  # each process its block, gathered below
        for start in range(0, len(block), self.schedule.explore_batch):
            idx = block[start : start + self.schedule.explore_batch]
            batch = self._batch(idx)
            rot, shift = self.poses(batch.idx)
            with self.volume.frozen(self._reference_weight, self._reference_mask):
                err, mate_rot, mate_shift = score_hypotheses(self, batch, rot, shift, mate_points, twofolds)
            best = err.argmin(1)
            to_mate = best > 0  # a mate beats the pose and its own local search
            ar = torch.arange(len(idx), device=self.device)
            if to_mate.any():
                self._reseed(batch.idx[to_mate], mate_rot[ar, best][to_mate], mate_shift[ar, best][to_mate])
            now, grid_err, grid_rot, grid_shift = self._fine_grid_search(batch, rot, shift, n_points)
            better = grid_err < now
            if (better & to_mate).any():  # a grid pose replaces a mate only if it fits better as the mate did
                with self.volume.frozen(self._reference_weight, self._reference_mask):
                    g_err, _ = self._score_candidates(
                        batch, grid_rot[:, None], grid_shift[:, None], mate_points
                    )
                better &= ~to_mate | (g_err[:, 0] < err[ar, best])
            if better.any():
                self._reseed(batch.idx[better], grid_rot[better], grid_shift[better])
            flipped += int(to_mate.sum())
            moved += int((better | to_mate).sum())
        self.dp.sync_blocks(distributed.particle_state(self), self.n)
        moved, flipped = self.dp.sum_scalar(moved), self.dp.sum_scalar(flipped)
        self.research_moved = moved / self.n
        log.info(
            "global re-search at epoch %d moved %.1f%% of particles (%.1f%% to a mate)",
            self.epoch,
            100 * moved / self.n,
            100 * flipped / self.n,
        )

    # ------------------------------------------------------------------------------------- reporting
    def current_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """Every particle's current best rotation (n, 3, 3) and shift (n, 2) in pixels."""
        if self.poses is not None:
            rot, shift = self.poses.all_poses()
            return rot.cpu().numpy(), shift.cpu().numpy()
        return self.best_rot.numpy(), self.best_shift.numpy()

    def _particle_view(self, with_posterior: bool) -> ParticleView:
        i = min(max(self._selected, 0), self.n - 1)
        idx = np.array([i])
        batch = self._batch(idx)
        half = int(self.halves[i]) if self.volume.copies == 2 else 0
        n_points = self.schedule.points(self.disk, self.stage, self.epoch)
        path = np.zeros((0, 3, 3), np.float32)
        with torch.no_grad():
            if self.stage == Stage.EXPLORING:
                found = grid_search(
                    self.volume,
                    batch,
                    self.grids[self.schedule.explore_grid(self.epoch)],
                    self._explore_centres(batch.idx),
                    self.offsets,
                    self.disk,
                    n_points,
                    self.schedule.explore_top_k,
                    copy=half,
                    shift_sigma=self.schedule.shift_prior,
                )
                rot, shift, err = found.rotations, found.shifts, found.errors[0]
                labels = [f"grid {j + 1}" for j in range(rot.shape[1])]
            elif self.poses is None:
                self.encoder.eval()
                rot, shift = self.encoder(self._encoder_input(batch))
                rot, shift, has = self._with_kept(idx, rot, shift)
                err, shift = searched_error(
                    self.volume, batch, rot, shift, self.offsets, self.disk, n_points, half
                )
                err = err[0]
                labels = [f"head {j + 1}" for j in range(self.config.heads)] + ["kept"]
                if not bool(has[0]):
                    rot, shift, err, labels = rot[:, :-1], shift[:, :-1], err[:-1], labels[:-1]
            else:
                r, s = self.poses(batch.idx)
                rot, shift = r[:, None], s[:, None]
                path = np.asarray(self._paths.get(i, []), np.float32).reshape(-1, 3, 3)
                err, shift = searched_error(
                    self.volume, batch, rot, shift, self.offsets, self.disk, n_points, half
                )
                err = err[0]
                labels = ["pose"]
            win = int(err.argmin())
            projection = self._projection(batch, rot[0, win], shift[0, win], half)
        log_post = zoom = None
        if with_posterior:
            s_win = shift[0, win]
            sigma2 = max(float(err.min()), 1e-6)

            def score(rots: torch.Tensor) -> torch.Tensor:
                b = ImageBatch(
                    batch.idx.expand(rots.shape[0]),
                    batch.images.expand(rots.shape[0], -1, -1),
                    batch.spectrum.expand(rots.shape[0], -1),
                    batch.ctf.expand(rots.shape[0], -1),
                )
                e = squared_error(
                    self.volume, b, rots, s_win.expand(rots.shape[0], 2), self.disk, n_points, half
                )
                return e * n_points / (2 * sigma2)

            with torch.no_grad():
                nside, anchors = self.schedule.posterior_nside, rot[0].cpu().double()
                log_post, zoom = refined_view_posterior(score, anchors, nside, device=self.device)
        return ParticleView(
            index=i,
            image=batch.images[0].cpu().numpy(),
            projection=projection,
            candidates=rot[0].cpu().numpy(),
            candidate_losses=err.cpu().numpy(),
            winner=win,
            path=path,
            log_posterior=log_post,
            labels=labels,
            zoom=zoom,
        )

    def _projection(self, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, half: int) -> np.ndarray:
        """The CTF-modulated, shifted model projection of one particle in real space."""
        k = frequency_grid_2d(self.box, self.device).reshape(-1, 2)
        full_ctf = torch.zeros(self.box * self.box, device=self.device)
        full_ctf[self.disk.flat] = batch.ctf[0] if batch.whiten is None else batch.ctf[0] / batch.whiten[0]
        h = self.volume.slices(rot[None], k, half)[0]
        hm = h.reshape(self.box, self.box)
        f = 0.5 * (hm + _flip(hm)) - 0.5j * (hm - _flip(hm))
        f = f.reshape(-1) * full_ctf * centering_phase(k / self.box, shift[None])[0].conj()
        return ifftn_centered(f.reshape(self.box, self.box), 2).real.cpu().numpy() * self.box

    def _volume_array(self) -> np.ndarray:
        """The map shown and saved: half A's until the independent halves are aligned, then their mean."""
        copy = None if self.halves_aligned else 0
        return self.volume.real_space(copy).cpu().numpy() * (self.scale * self.box)

    def _head_fractions(self) -> np.ndarray:
        won = self.best_head[self.best_head >= 0]
        counts = torch.bincount(won, minlength=self.config.heads + 1).float()
        return (counts / counts.sum().clamp_min(1)).numpy()

    def _snapshot(self, loss: float, ips: float, full: bool, with_posterior: bool = False) -> Snapshot:
        full, with_posterior = full and self.dp.main, with_posterior and self.dp.main  # others show nothing
        evaluated = [h for h in self.history if h["resolution"] is not None]
        last = evaluated[-1] if evaluated else {}
        fsc = last.get("fsc")
        epoch_size = self.n if self.perm is None else len(self.perm)  # the explored subset before the switch
        return Snapshot(
            epoch=self.epoch,
            step=self.step,
            stage=self.stage,
            progress=min(1.0, (self.epoch + self.pos / epoch_size) / self.config.epochs),
            elapsed_s=self.elapsed,
            images_per_s=ips,
            loss=loss,
            voxel_size=self.particles.pixel_size,
            volume=self._volume_array() if full else None,
            head_fractions=self._head_fractions(),
            particle=self._particle_view(with_posterior) if full and self.views else None,
            resolution=last.get("resolution"),
            fsc=None if fsc is None else (np.asarray(fsc[0]), np.asarray(fsc[1])),
            history=list(self.history),
            message=self._message(loss, ips, last.get("resolution")),
            polarity=self.polarity.summary(),
            halves=self._halves_status(),
        )

    def _message(self, loss: float, ips: float, res: float | None) -> str:
        r = f", {res:.1f} Å" if res else ""
        halves = f" · {self._halves_status()}" if self.agreement is not None else ""
        return (
            f"epoch {min(self.epoch + 1, self.config.epochs)}/{self.config.epochs} · {self.stage.value} · "
            f"{ips:.0f} img/s · loss {loss:.4f}{r}{halves} · {self.polarity.summary()}"
        )

    def _halves_status(self) -> str:
        """ "halves agree", a warning, or "" before the independent halves are compared."""
        if self.agreement is None:
            return ""
        return "halves agree" if self.agreement["agree"] else "WARNING: halves disagree (map not reliable)"

    # ------------------------------------------------------------------------------------------ loop
    def _handle(self, cmd: Command | None) -> None:
        if cmd is None:
            return
        if cmd.kind == "particle" and cmd.value is not None:
            self._selected = int(cmd.value)
            self._want_posterior = True
        elif cmd.kind in ("switch", "stop"):
            self._commands.append(cmd)
        else:
            raise ValueError(f"unknown engine command {cmd.kind!r}")

    def run(self) -> Generator[Snapshot, Command | None, None]:
        """Run (or resume) the reconstruction, yielding snapshots; see the module docstring. The output
        folder's lock goes once the last file is written (before the final snapshot), or on any error."""
        try:
            yield from self._stream()
        finally:
            self._release_folder()

    def _release_folder(self) -> None:
        if self._folder_lock is not None:
            self._folder_lock.release()

    def _stream(self) -> Generator[Snapshot, Command | None, None]:
        self._build()
        if self._resume_state is not None:
            self._restore(self._resume_state)
        self.dp.broadcast(self.encoder, self.volume)
        self._paths: dict[int, list[np.ndarray]] = {}
        self._want_posterior = True
        auto = AutoSwitch()
        last_yield = 0.0
        before_decoding = (Stage.EXPLORING, Stage.ENCODING)
        try:
            while self.epoch < self.config.epochs:
                if self.stage == Stage.EXPLORING and self.epoch >= self.schedule.explore_epochs:
                    self._align_halves()
                    self.stage = Stage.ENCODING
                    log.info("exploration done after %d epochs; auto-encoding starts", self.epoch)
                if self.stage in before_decoding:
                    sw = self.config.switch
                    if isinstance(sw, int) and not isinstance(sw, bool) and self.epoch >= sw:
                        self._switch_to_decoding(f"set epoch {sw}")
                if self.perm is None:
                    gen = torch.Generator().manual_seed(self.config.seed * 1000 + self.epoch)
                    self.perm = torch.randperm(self.n, generator=gen).numpy()
                    self.perm = self.semi.order(self.perm, self.stage)  # the explored subset (pre-switch)
                    if self.stage == Stage.DECODING and self.volume.copies == 2:  # in any number of processes
                        self.perm = distributed.balanced_order(self.perm, self.halves_np)
                    self.pos = 0
                    if self.stage == Stage.DECODING and self.epoch == self.schedule.research_epoch():
                        self._research_poses()
                    if self.pose_opt is not None:
                        scale = self.schedule.pose_rate_scale(self.epoch)
                        rates = (self.schedule.rotation_lr, self.schedule.shift_lr)
                        for group, rate in zip(self.pose_opt.param_groups, rates, strict=True):
                            group["lr"] = rate * scale
                t_epoch = time.perf_counter()
                seen, loss_sum, local_seen, local_sum = 0, 0.0, 0, 0.0
                while self.pos < len(self.perm):
                    stop, switch = self.dp.agree(  # every process stops or switches at the same step
                        *(any(c.kind == kind for c in self._commands) for kind in ("stop", "switch"))
                    )
                    if stop:
                        raise StopRun
                    if self.stage in before_decoding and switch:
                        self._commands = [c for c in self._commands if c.kind != "switch"]
                        self._switch_to_decoding("requested by the user")
                    exploring = self.stage == Stage.EXPLORING
                    bs = self.schedule.explore_batch if exploring else self.config.batch_size
                    idx = self.perm[self.pos : self.pos + bs]
                    part = self.dp.split(idx, self.halves_np, self._halves_owned())  # this process's share
                    t0 = time.perf_counter()
                    n_points = self.schedule.points(self.disk, self.stage, self.epoch)
                    if self.stage == Stage.EXPLORING:
                        loss = self._exploring_step(part, n_points)
                    elif self.stage == Stage.ENCODING:
                        loss = self._encoding_step(part, n_points)
                    else:
                        loss = self._decoding_step(part, n_points)
                    self.dp.sync_rows(distributed.particle_state(self), idx)
                    if self.stage == Stage.DECODING and self._selected in set(idx.tolist()):
                        self._record_path()
                    self.elapsed += time.perf_counter() - t0
                    self.step += 1
                    self.pos += len(idx)
                    seen += len(idx)
                    loss_sum += loss * len(idx)
                    local_seen += len(part)
                    local_sum += loss * len(part)
                    now = time.perf_counter()
                    if now - last_yield >= self.config.snapshot_interval_s:
                        ips = seen / max(now - t_epoch, 1e-9)
                        full = self._want_posterior or now - last_yield >= 4 * self.config.snapshot_interval_s
                        snap = self._snapshot(loss_sum / seen, ips, full, self._want_posterior)
                        self._want_posterior = False
                        last_yield = time.perf_counter()
                        self._handle((yield snap))
                ips = seen / max(time.perf_counter() - t_epoch, 1e-9)
                loss = self.dp.sum_scalar(local_sum) / max(self.dp.sum_scalar(local_seen), 1)  # every image's
                self._sync_halves()
                self._end_epoch(loss, ips, auto)
                snap = self._snapshot(loss, ips, True, True)
                last_yield = time.perf_counter()
                self._handle((yield snap))
        except StopRun:
            self._sync_halves()
            if self.dp.main:
                save_checkpoint(self.out, self._state())
            snap = self._snapshot(float("nan"), 0.0, True)
            snap.stage = Stage.DONE
            snap.message = f"stopped at epoch {self.epoch + 1}; checkpoint saved in {self.out}"
            self._release_folder()
            yield snap
            return
        final = write_results(self)
        if self.dp.main:
            write_run_record(self.out, "reconstruct", self.config.to_dict(), self.identity)
        snap = self._snapshot(self.history[-1]["loss"] if self.history else float("nan"), 0.0, True, True)
        snap.stage = Stage.DONE
        snap.message = final.summary
        if final.fsc is not None:  # the full-size half maps', not the last epoch's working-box FSC
            snap.resolution, snap.fsc, snap.fsc_curves = final.resolution, final.fsc, final.curves
        self._release_folder()
        yield snap

    def _halves_owned(self) -> bool:
        """Whether this stage's steps are split by half (auto-decoding with two map copies, processes even):
        the processes of half h then move map copy h alone (see ``distributed``)."""
        return self.stage == Stage.DECODING and self.volume.copies == 2 and self.dp.owns_halves

    def _sync_halves(self) -> None:
        """Every process takes each half's map and Adam moments from the half's owners (epoch end, stop)."""
        if self._halves_owned():
            self.dp.sync_copies(self.volume, self.vol_opt)

    def _record_path(self) -> None:
        assert self.poses is not None
        with torch.no_grad():
            r, _ = self.poses(torch.tensor([self._selected], device=self.device))
        self._paths.setdefault(self._selected, []).append(r[0].cpu().numpy())

    def _follow_fsc(self, fsc: list[float] | None) -> None:
        """Keep the halves' FSC per shell (None: not measured while decoding) and the pose filter it makes."""
        self.schedule.reference_fsc = fsc
        self._reference_weight = self.schedule.reference_weight(self.box, self.device)

    def _end_epoch(self, loss: float, ips: float, auto: AutoSwitch) -> None:
        rot, _ = self.current_poses()
        rot_t = torch.from_numpy(rot)
        stable = change = None
        posed = torch.from_numpy(self.semi.posed(self.stage))  # only the explored subset before the switch
        if self.prev_rot is not None:
            change = float(torch.rad2deg(geodesic_distance(self.prev_rot[posed], rot_t[posed])).median())
            if self.stage == Stage.ENCODING:
                stable = float((self.prev_head[posed] == self.best_head[posed]).float().mean())
        every = self.config.eval_every or max(1, self.config.epochs // 8)
        evaluate = (self.epoch + 1) % every == 0 or self.epoch + 1 == self.config.epochs
        record = write_epoch_record(self, loss, ips, stable, change, evaluate)
        record["radius"] = self.schedule.radius(self.stage, self.epoch)
        if self.stage == Stage.DECODING and record["fsc"] is not None:
            self.schedule.cap_from_fsc(radius_at(np.asarray(record["fsc"][1]), 0.143))
            self._follow_fsc([float(v) for v in record["fsc"][1]])
            record["radius_cap"] = self.schedule.radius_cap
        if self.epoch == self.schedule.research_epoch():
            record["research_moved"] = self.research_moved
        self.history.append(record)
        self.prev_rot = rot_t.clone()
        self.prev_head = self.best_head.clone()
        self.epoch += 1
        self.perm = None
        self.pos = 0
        if self.stage == Stage.ENCODING and self.config.switch == "auto":
            go, reason = auto.should_switch(self.epoch, self.config.epochs, stable, change)
            if go:
                self._switch_to_decoding(reason)
        if self.dp.main:
            save_checkpoint(self.out, self._state())
            write_json(self.out / "metrics.json", {"config": self.config.to_dict(), "epochs": self.history})


def _flip(h: torch.Tensor) -> torch.Tensor:
    """H(−k) on a centred even grid (the −L/2 row and column map onto themselves)."""
    return torch.roll(torch.flip(h, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
