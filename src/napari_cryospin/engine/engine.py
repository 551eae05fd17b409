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

This module holds the loop of stages; the run itself is its :class:`~.run_model.RunModel` (``model``),
each stage's step is its :class:`~.stages.Stages` (``stages``, with the optimisers), and what a snapshot
shows (``views.py``) is mixed into :class:`Engine`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator

import numpy as np
import torch

from ..data.safe_write import write_json
from ..geometry.rotations import geodesic_distance
from . import distributed
from .checkpoint import open_run_folder, read_resume_state, save_checkpoint
from .config import RunConfig
from .device import resolve_device
from .events import Command, Snapshot, Stage
from .inputs import input_identity
from .outputs import write_epoch_record, write_results
from .run_folder import write_run_record
from .run_model import RunModel
from .stages import Stages
from .switch import AutoSwitch
from .validity import radius_at
from .views import Views

log = logging.getLogger(__name__)


BEFORE_DECODING = (Stage.EXPLORING, Stage.ENCODING)
"""The stages a switch to auto-decoding leaves."""


class StopRun(Exception):
    """Raised inside the loop when the consumer asked to stop."""


class Engine(Views):
    """One reconstruction run; validates the input when constructed (errors name the file and fix).

    ``model`` (:class:`~.run_model.RunModel`) is the run; the engine holds what advances it: the
    optimisers, the place in the epoch, exploration's running sums, and the consumer's commands.
    """

    def __init__(self, config: RunConfig, views: bool = True):
        """``views``: build the chosen particle's candidates and pose posterior for the snapshots (the dock
        shows them; a headless run has no use for them, and their cost falls on process 0 alone)."""
        self.config = config
        self.views = views
        self.dp = distributed.from_env(torch.device(resolve_device(config.device)))  # one process unless
        self.device = self.dp.device  # started by torchrun
        self.model = RunModel.from_config(config, self.device, self.dp)
        self.out = config.out_dir
        self.identity = input_identity(self.model.particles)
        self._folder_lock, self._resume_state = self.dp.main_first(  # before any work; process 0 locks
            lambda: open_run_folder(config, self.identity),  # and prepares the folder
            lambda: (None, read_resume_state(config, self.identity)),
        )
        self._selected = 0
        self._research_s: float | None = None  # the wall time (s) of the re-search this epoch began with
        self._commands: list[Command] = []
        self.poll: Callable[[], Command | None] | None = None  # set by the consumer: see the module docstring

    def _build(self) -> None:
        """Build the model (``RunModel.build``) and its stages' steps; the loop starts at the first epoch."""
        self.model.build()
        self.stages = Stages(self.model, self.dp, self._stop_if_asked)
        self.perm, self.pos, self.step = None, 0, 0

    def _state(self) -> dict:
        """The checkpoint: the model's state, its steps' (optimisers, running sums), the epoch's place."""
        return {
            **self.model.state(),
            **self.stages.state(),
            "input": self.identity,
            "pos": self.pos,
            "perm": self.perm,
            "step": self.step,
            "rng": torch.get_rng_state(),
        }

    def _restore(self, st: dict) -> None:
        self.model.load_state(st)
        self.stages.load_state(st)
        self.pos, self.perm, self.step = st["pos"], st["perm"], st["step"]
        torch.set_rng_state(st["rng"])

    # ----------------------------------------------------------------------------------------- setup
    def _stop_if_asked(self) -> None:
        """Raise StopRun when a stop was asked meanwhile (through ``poll``), between a long computation's
        chunks; the state is still the one the last epoch ended with, so the checkpoint resumes from there."""
        if self.poll is not None:
            self._handle(self.poll())
        if any(c.kind == "stop" for c in self._commands):
            raise StopRun

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
        m = self.model
        self._build()
        if self._resume_state is not None:
            self._restore(self._resume_state)
        self.dp.broadcast(m.encoder, m.volume)
        self._paths: dict[int, list[np.ndarray]] = {}
        self._want_posterior = True
        self._last_yield = 0.0
        auto = AutoSwitch()
        try:
            while m.epoch < m.schedule.epochs:  # an extended exploration adds epochs
                self._begin_epoch()
                loss, ips = yield from self._epoch_steps()
                self._sync_halves()
                self._end_epoch(loss, ips, auto)
                snap = self._snapshot(loss, ips, True, True)
                self._last_yield = time.perf_counter()
                self._handle((yield snap))
        except StopRun:
            yield self._stopped()
            return
        yield self._finished()

    def _begin_epoch(self) -> None:
        """Stage changes due at this epoch, then (unless resumed mid-epoch) the epoch's particle order, the
        global re-search when it is due, and the pose steps' rates."""
        m = self.model
        sw = self.config.switch
        set_switch = (
            m.stage in BEFORE_DECODING and isinstance(sw, int) and not isinstance(sw, bool) and m.epoch >= sw
        )
        exploring = m.stage == Stage.EXPLORING and m.epoch >= m.schedule.explore_end
        if exploring and (set_switch or self.stages.halves_settled()):  # a switch set for now ends it
            self.stages.align_halves()
            m.stage = Stage.ENCODING
            log.info("exploration done after %d epochs; auto-encoding starts", m.epoch)
        if set_switch:
            self.stages.switch_to_decoding(f"set epoch {sw}")
        if self.perm is not None:
            return
        gen = torch.Generator().manual_seed(self.config.seed * 1000 + m.epoch)
        # Before the switch only the explored subset is walked.
        self.perm = m.semi.order(torch.randperm(m.n, generator=gen).numpy(), m.stage)
        if m.stage == Stage.DECODING and m.volume.copies == 2:  # in any number of processes
            self.perm = distributed.balanced_order(self.perm, m.halves_np)
        self.pos = 0
        if self.stages.research_due():
            t0 = time.perf_counter()
            self.stages.research_poses()
            self._research_s = time.perf_counter() - t0
        if self.stages.pose_opt is not None:
            scale = m.schedule.pose_rate_scale(m.epoch)
            rates = (m.schedule.rotation_lr, m.schedule.shift_lr)
            for group, rate in zip(self.stages.pose_opt.param_groups, rates, strict=True):
                group["lr"] = rate * scale

    def _epoch_steps(self) -> Generator[Snapshot, Command | None, tuple[float, float]]:
        """The rest of the epoch's batches, a snapshot at most every ``snapshot_interval_s``; returns the
        epoch's mean loss over every process's images and this process's images per second."""
        t_epoch = time.perf_counter()
        seen, loss_sum, local_seen, local_sum = 0, 0.0, 0, 0.0
        while self.pos < len(self.perm):
            idx, part, loss = self._step()
            seen += len(idx)
            loss_sum += loss * len(idx)
            local_seen += len(part)
            local_sum += loss * len(part)
            now = time.perf_counter()
            if now - self._last_yield >= self.config.snapshot_interval_s:
                ips = seen / max(now - t_epoch, 1e-9)
                full = self._want_posterior or now - self._last_yield >= 4 * self.config.snapshot_interval_s
                snap = self._snapshot(loss_sum / seen, ips, full, self._want_posterior)
                self._want_posterior = False
                self._last_yield = time.perf_counter()
                self._handle((yield snap))
        ips = seen / max(time.perf_counter() - t_epoch, 1e-9)
        return self.dp.sum_scalar(local_sum) / max(self.dp.sum_scalar(local_seen), 1), ips

    def _step(self) -> tuple[np.ndarray, np.ndarray, float]:
        """One batch of the current stage (after the consumer's stop or switch, agreed by every process);
        returns the batch, this process's share of it and the share's loss."""
        m = self.model
        stop, switch = self.dp.agree(  # every process stops or switches at the same step
            *(any(c.kind == kind for c in self._commands) for kind in ("stop", "switch"))
        )
        if stop:
            raise StopRun
        if m.stage in BEFORE_DECODING and switch:
            self._commands = [c for c in self._commands if c.kind != "switch"]
            self.stages.switch_to_decoding("requested by the user")
        bs = m.schedule.explore_batch if m.stage == Stage.EXPLORING else self.config.batch_size
        idx = self.perm[self.pos : self.pos + bs]
        part = self.dp.split(idx, m.halves_np, self._halves_owned())  # this process's share
        t0 = time.perf_counter()
        n_points = m.schedule.points(m.disk, m.stage, m.epoch)
        if m.stage == Stage.EXPLORING:
            loss = self.stages.exploring_step(part, n_points)
        elif m.stage == Stage.ENCODING:
            loss = self.stages.encoding_step(part, n_points)
        else:
            loss = self.stages.decoding_step(part, n_points)
        self.dp.sync_rows(distributed.particle_state(m, self.stages.pose_opt), idx)
        if m.stage == Stage.DECODING and self._selected in set(idx.tolist()):
            self._record_path()
        m.elapsed += time.perf_counter() - t0
        self.step += 1
        self.pos += len(idx)
        return idx, part, loss

    def _stopped(self) -> Snapshot:
        """Checkpoint the state the last epoch ended with; the last snapshot says where it is."""
        self._sync_halves()
        if self.dp.main:
            save_checkpoint(self.out, self._state())
        snap = self._snapshot(float("nan"), 0.0, True)
        snap.stage = Stage.DONE
        snap.message = f"stopped at epoch {self.model.epoch + 1}; checkpoint saved in {self.out}"
        self._release_folder()
        return snap

    def _finished(self) -> Snapshot:
        """Write the results and run.json; the last snapshot carries the final resolution and verdict."""
        final = write_results(self.model, self.out)
        if self.dp.main:
            write_run_record(self.out, "reconstruct", self.config.to_dict(), self.identity)
        history = self.model.history
        snap = self._snapshot(history[-1]["loss"] if history else float("nan"), 0.0, True, True)
        snap.stage = Stage.DONE
        snap.message = final.summary
        if final.fsc is not None:  # the full-size half maps', not the last epoch's working-box FSC
            snap.resolution, snap.fsc, snap.fsc_curves = final.resolution, final.fsc, final.curves
        self._release_folder()
        return snap

    def _halves_owned(self) -> bool:
        """Whether this stage's steps are split by half (auto-decoding with two map copies, processes even):
        the processes of half h then move map copy h alone (see ``distributed``)."""
        return self.model.stage == Stage.DECODING and self.model.volume.copies == 2 and self.dp.owns_halves

    def _sync_halves(self) -> None:
        """Every process takes each half's map and Adam moments from the half's owners (epoch end, stop)."""
        if self._halves_owned():
            self.dp.sync_copies(self.model.volume, self.stages.vol_opt)

    def _record_path(self) -> None:
        assert self.model.poses is not None
        with torch.no_grad():
            r, _ = self.model.poses(torch.tensor([self._selected], device=self.device))
        self._paths.setdefault(self._selected, []).append(r[0].cpu().numpy())

    def _end_epoch(self, loss: float, ips: float, auto: AutoSwitch) -> None:
        m = self.model
        rot, _ = m.current_poses()
        rot_t = torch.from_numpy(rot)
        stable = change = None
        posed = torch.from_numpy(m.semi.posed(m.stage))  # only the explored subset before the switch
        if self.stages.prev_rot is not None:
            change = float(
                torch.rad2deg(geodesic_distance(self.stages.prev_rot[posed], rot_t[posed])).median()
            )
            if m.stage == Stage.ENCODING:
                stable = float((self.stages.prev_head[posed] == m.best_head[posed]).float().mean())
        every = self.config.eval_every or max(1, self.config.epochs // 8)
        evaluate = (m.epoch + 1) % every == 0 or m.epoch + 1 == m.schedule.epochs
        record = write_epoch_record(self.model, self.out, loss, ips, stable, change, evaluate)
        record["radius"] = m.schedule.radius(m.stage, m.epoch)
        if m.stage == Stage.DECODING and record["fsc"] is not None:
            m.schedule.cap_from_fsc(radius_at(np.asarray(record["fsc"][1]), 0.143))
            m.follow_fsc([float(v) for v in record["fsc"][1]])
            record["radius_cap"] = m.schedule.radius_cap
        if self._research_s is not None:  # this epoch began with a global re-search
            record["research_moved"], record["research_far"] = m.research_moved, m.research_far
            record["research_s"] = self._research_s  # not in wall_s: that is the steps' time
            self._research_s = None
        m.history.append(record)
        self.stages.prev_rot = rot_t.clone()
        self.stages.prev_head = m.best_head.clone()
        m.epoch += 1
        self.perm = None
        self.pos = 0
        if m.stage == Stage.ENCODING and self.config.switch == "auto":
            go, reason = auto.should_switch(m.epoch, m.schedule.epochs, stable, change)
            if go:
                self.stages.switch_to_decoding(reason)
        if self.dp.main:
            save_checkpoint(self.out, self._state())
            write_json(self.out / "metrics.json", {"config": self.config.to_dict(), "epochs": m.history})
