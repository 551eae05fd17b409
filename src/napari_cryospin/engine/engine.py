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

This module holds the loop of stages; the run's data and parameters (``run_state.py``), each stage's
step (``stages.py``) and what a snapshot shows (``views.py``) are mixed into :class:`Engine`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator

import numpy as np
import torch

from ..data.errors import ParticleFileError
from ..data.particles import ParticleSet, load_particles
from ..geometry.rotations import geodesic_distance
from ..geometry.symmetry import group_operators
from ..model.likelihood import (
    FrequencyDisk,
)
from ..safe_write import write_json
from . import distributed
from .amortized import explored_count
from .checkpoint import open_run_folder, read_resume_state, save_checkpoint
from .config import RunConfig
from .device import resolve_device
from .events import Command, Snapshot, Stage
from .inputs import check_enough_particles, input_identity
from .outputs import write_epoch_record, write_results
from .run_folder import write_run_record
from .run_state import RunState
from .schedule import Schedule
from .stages import Stages
from .switch import AutoSwitch
from .validity import half_map_mask, radius_at
from .views import Views
from .working_box import working_box

log = logging.getLogger(__name__)


class StopRun(Exception):
    """Raised inside the loop when the consumer asked to stop."""


class Engine(RunState, Stages, Views):
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
    def _stop_if_asked(self) -> None:
        """Raise StopRun when a stop was asked meanwhile (through ``poll``), between a long computation's
        chunks; the state is still the one the last epoch ended with, so the checkpoint resumes from there."""
        if self.poll is not None:
            self._handle(self.poll())
        if any(c.kind == "stop" for c in self._commands):
            raise StopRun

    def current_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """Every particle's current best rotation (n, 3, 3) and shift (n, 2) in pixels."""
        if self.poses is not None:
            rot, shift = self.poses.all_poses()
            return rot.cpu().numpy(), shift.cpu().numpy()
        return self.best_rot.numpy(), self.best_shift.numpy()

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
