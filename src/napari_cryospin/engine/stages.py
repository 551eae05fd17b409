"""The stages' steps: scoring candidate poses against each particle's own half map, exploration's grid
search, auto-encoding, the switch, auto-decoding and its global re-search, the halves' alignment."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from ..geometry.rotations import geodesic_distance
from ..metrics.alignment import FrameChange, align_maps
from ..model.poses import ParticlePoses
from ..model.search import forget, grid_search, insert_weighted
from ..physics.reconstruction import Accumulator, solve_map
from . import distributed
from .amortized_posing import pose_rest
from .events import Stage
from .mates import map_twofolds, score_hypotheses
from .optimizers import RowAdam, adam
from .research import BATCH as RESEARCH_BATCH
from .research import FAR_DEG, HELD_OUT, held_out_subset, maps_from_poses, wide_search
from .reseed import half_to_restart, restart_half
from .run_model import RunModel
from .symmetry_frame import impose_symmetry
from .validity import SETTLED_FRACTION, half_agreement

log = logging.getLogger(__name__)


class Stages:
    """Each stage's step over a run's model, with what the steps move besides it: the optimisers,
    exploration's running sums and the poses the last epoch ended with (the auto-switch's measure).
    :class:`~.engine.Engine` calls them from its loop."""

    def __init__(
        self, model: RunModel, dp: distributed.DataParallel, stop_check: Callable[[], None] | None = None
    ) -> None:
        """``stop_check``: called between the chunks of the halves' alignment; it raises to stop the run."""
        self.model, self.config, self.dp, self.device = model, model.config, dp, model.device
        self.stop_check = stop_check
        self.enc_opt = adam(model.encoder.parameters(), model.schedule.encoder_lr, self.device)
        self.vol_opt = adam(model.volume.parameters(), model.schedule.volume_lr_encoding, self.device)
        self.pose_opt: torch.optim.Optimizer | None = None
        self.explore_sums: list = [None] * model.volume.copies
        self.prev_rot: torch.Tensor | None = None
        self.prev_head: torch.Tensor | None = None
        self._change: tuple[np.ndarray, FrameChange] | None = None  # the settled check's, for the alignment

    def state(self) -> dict:
        """The steps' part of a checkpoint."""
        return {
            "explore_sums": self.explore_sums,
            "enc_opt": self.enc_opt.state_dict(),
            "vol_opt": self.vol_opt.state_dict(),
            "pose_opt": None if self.pose_opt is None else self.pose_opt.state_dict(),
            "prev_rot": self.prev_rot,
            "prev_head": self.prev_head,
        }

    def load_state(self, st: dict) -> None:
        """Take the steps' part of checkpoint ``st``, after the model took its own."""
        self.explore_sums = [
            None if acc is None else Accumulator(acc.num.to(self.device), acc.den.to(self.device))
            for acc in st["explore_sums"]
        ]
        self.enc_opt.load_state_dict(st["enc_opt"])
        self.vol_opt = self.volume_optimizer()  # the map may have split into halves since the start
        self.vol_opt.load_state_dict(st["vol_opt"])
        if self.model.poses is not None:
            self.pose_opt = self.pose_optimizer()
            self.pose_opt.load_state_dict(st["pose_opt"])
        self.prev_rot, self.prev_head = st["prev_rot"], st["prev_head"]

    def volume_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the map at the stage's rate."""
        sch = self.model.schedule
        lr = sch.volume_lr_decoding if self.model.stage == Stage.DECODING else sch.volume_lr_encoding
        return adam(self.model.volume.parameters(), lr, self.device)

    def pose_optimizer(self) -> torch.optim.Optimizer:
        """Row-wise Adam over the particles' rotations and shifts (auto-decoding)."""
        m = self.model
        assert m.poses is not None
        return RowAdam(
            [
                {"params": [m.poses.omega.weight], "lr": m.schedule.rotation_lr},
                {"params": [m.poses.shift.weight], "lr": m.schedule.shift_lr},
            ]
        )

    def exploring_step(self, idx: np.ndarray, n_points: int) -> float:
        """Soft-assign the batch over the grid, fold it into each half's running sums, re-solve the maps."""
        m = self.model
        batch = m.batch(idx)
        sch = m.schedule
        errors = []
        for c, mask in m.copy_masks(batch.idx):
            sub = batch.select(mask)
            found = grid_search(
                m.volume,
                sub,
                m.grids[sch.explore_grid(m.epoch)],
                self.explore_centres(sub.idx),
                m.offsets,
                m.disk,
                n_points,
                sch.explore_top_k,
                copy=c,
                temperature=sch.explore_temperature(m.epoch),
                shift_sigma=sch.shift_prior,
            )
            # Each half remembers its share of ``explore_memory``: the same dynamics as one shared map.
            share = self._copy_size(c) / m.semi.size
            new = insert_weighted(sub, found, m.disk, n_points)
            new, count = self.dp.sum_accumulator(new, len(sub.idx))  # the whole batch's, over processes
            new = new.symmetrized(m.symmetry)  # each image also at its mates' poses
            rate = count / min(self._copy_size(c), sch.explore_memory * share)
            self.explore_sums[c] = forget(self.explore_sums[c], new, rate)
            # The sums hold normalised spectra, so the solved map is already in the decoder's units.
            solved = torch.from_numpy(solve_map(self.explore_sums[c], prior=m.prior)).to(self.device)
            m.volume.set_from_real_space(solved, copy=c)
            cpu_idx = sub.idx.cpu()
            m.best_rot[cpu_idx] = found.rotations[:, 0].cpu()
            m.best_shift[cpu_idx] = found.shifts[:, 0].cpu()
            m.best_head[cpu_idx] = self.config.heads
            errors.append(found.errors[:, 0])
        return float(torch.cat(errors).mean())

    def explore_centres(self, idx: torch.Tensor) -> torch.Tensor:
        """Where exploration's shift search is centred for particles ``idx`` (B, 2) px: each particle's last
        shift when the schedule has a shift prior, else the box centre.

        The centre is pulled in to at most the search radius from the box centre, so that the window always
        holds the centre: a shift that wandered while the map was poor can come back (on ribosome70s, 25
        particles had drifted to 5–11 px, true ≤ 4 px, and ended > 30° off), and picks out to twice the
        radius can still be followed.
        """
        m = self.model
        if m.schedule.shift_prior is None:
            return torch.zeros(len(idx), 2, device=self.device)
        last = m.best_shift[idx.cpu()]
        radius = m.schedule.shift_search
        scale = (radius / last.norm(dim=-1, keepdim=True).clamp_min(1e-6)).clamp(max=1.0)
        return (last * scale).to(self.device)

    def _copy_size(self, copy: int) -> int:
        """How many particles train map copy ``copy`` (of the explored subset with ``explore_subset``)."""
        m = self.model
        pool = m.semi.explored
        return len(pool) if m.volume.copies == 1 else int((m.halves_np[pool] == copy).sum())

    def _halves_change(self) -> tuple[np.ndarray, FrameChange]:
        """Half A's map (D, D, D) and the change of frame that brings half B's onto it."""
        m = self.model
        a = m.volume.real_space(0).cpu().numpy()
        b = m.volume.real_space(1).cpu().numpy()
        between = None if self.dp.active else self.stop_check  # processes search apart: no stop there
        return a, align_maps(b, a, seed=self.config.seed, map_fn=self.dp.map, between=between)  # a hand each

    @torch.no_grad()
    def halves_settled(self) -> bool:
        """At exploration's planned end: whether it may end, or is extended because the independent halves
        do not yet agree (FSC 0.5 short of ``SETTLED_FRACTION`` of the top radius after alignment).

        At low SNR one half can still be at chance, or hold a map the other does not, after the planned
        epochs; measured at SNR 0.05 (an 84 kDa elongated particle, 5000 images), one half was still ~90°
        off after 8 epochs and found the structure by epoch 14 of 16.
        """
        m = self.model
        sch = m.schedule
        if m.volume.copies != 2 or m.halves_aligned or not sch.can_extend_exploration():
            return True
        a, change = self._halves_change()
        agreement = half_agreement(a, change.aligned, sch.explored_radius(m.epoch))
        if agreement["radius_fsc05"] >= SETTLED_FRACTION * agreement["top_radius"]:
            self._change = (a, change)
            return True
        added = sch.extend_exploration()
        m.explore_checks.append(agreement["radius_fsc05"])
        log.info("%s: exploring %d more epochs", agreement["summary"], added)
        if m.restarted is None:
            self._restart_if_one_half_solved()
        return False

    def _restart_if_one_half_solved(self) -> None:
        """Restart a half whose map fits the other half's images clearly worse from the other's map at
        exploration's first radius (``reseed.py``); its running sums start again."""
        m = self.model
        worse, record = half_to_restart(m, self.config.seed)
        if worse is None:
            return
        record.update(half="AB"[worse], epoch=m.epoch, radius=restart_half(m, worse))
        self.explore_sums[worse] = None
        m.restarted = record
        log.info(
            "half %s restarted from half %s's map at %.1f cycles per box",
            "AB"[worse],
            "BA"[worse],
            record["radius"],
        )

    @torch.no_grad()
    def align_halves(self) -> None:
        """Bring half B's map and poses into half A's frame and record how well the two maps agree.

        The halves were explored independently (each could have settled in its own orientation or hand), so
        their agreement after alignment is evidence that the structure is in the data, not in the start.
        """
        m = self.model
        if m.halves_aligned:
            return
        a, change = self._change if self._change is not None else self._halves_change()
        self._change = None
        m.volume.set_from_real_space(torch.from_numpy(change.aligned).to(self.device), copy=1)
        members = (m.halves == 1).cpu()
        rot, shift = change.poses(m.best_rot[members].double().numpy(), m.best_shift[members].numpy())
        m.best_rot[members] = torch.from_numpy(rot).float()
        m.best_shift[members] = torch.from_numpy(shift).float()
        if self.prev_rot is not None:  # a change of frame is not a change of pose (auto-switch's measure)
            self.prev_rot[members] = m.best_rot[members].clone()
        m.agreement = half_agreement(
            a, change.aligned, m.schedule.explored_radius(m.epoch), restarted=m.restarted
        )
        m.agreement["explore_epochs"] = m.schedule.explore_end
        m.agreement["earlier_radii_fsc05"] = list(m.explore_checks)  # the checks that extended exploration
        if m.explore_checks:
            m.agreement["summary"] += f" after {m.schedule.explore_end} epochs of exploration"
        self.explore_sums = [None, None]
        m.halves_aligned = True
        log.info("halves aligned: %s", m.agreement["summary"])

    def encoding_step(self, idx: np.ndarray, n_points: int) -> float:
        """WTA over the heads trains the encoder; the map learns from each particle's best candidate.

        The heads' errors see the map detached, so heads that are still wrong do not blur it; the
        particle's kept pose competes with the heads and is replaced when a head beats it.
        """
        m = self.model
        batch = m.batch(idx)
        m.encoder.train()
        heads = self.config.heads
        rot, shift = m.encoder(m.encoder_input(batch))
        err, cand_rot, cand_shift, win = m.best_candidates(idx, batch, rot, shift, n_points)
        encoder_loss = err[:, :heads].min(dim=1).values.mean()
        ar = torch.arange(len(idx), device=self.device)
        win_rot, win_shift = cand_rot[ar, win], cand_shift[ar, win]
        with m.volume.shared():
            map_loss = m.squared_error(batch, win_rot, win_shift, n_points).mean()
        self.enc_opt.zero_grad(set_to_none=True)
        self.vol_opt.zero_grad(set_to_none=True)
        (encoder_loss + map_loss).backward()
        self.dp.average_gradients(m.encoder, m.volume)
        self.enc_opt.step()
        self.vol_opt.step()
        cpu_idx = torch.as_tensor(idx)
        m.best_rot[cpu_idx] = win_rot.cpu()
        m.best_shift[cpu_idx] = win_shift.cpu()
        m.best_head[cpu_idx] = win.cpu()
        return float(map_loss.detach())

    def decoding_step(self, idx: np.ndarray, n_points: int) -> float:
        m = self.model
        assert m.poses is not None and self.pose_opt is not None
        if len(idx) == 0:  # this process's half has no particle in the batch: its map still takes Adam's step
            for p in m.volume.parameters():
                p.grad = torch.zeros_like(p)
            self.dp.average_gradients(m.volume)
            self.vol_opt.step()
            return 0.0
        batch = m.batch(idx)
        t_idx = batch.idx
        parts = m.copy_parts(batch)  # the same sub-batches for all six steps
        with m.volume.frozen(m.reference_weight, m.reference_mask):  # fixed, masked, filtered
            for _ in range(m.schedule.pose_steps):
                rot, shift = m.poses(t_idx)
                loss = m.squared_error(batch, rot, shift, n_points, detach=True, parts=parts).mean()
                self.pose_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.dp.scale_local_gradients(m.poses)
                self.pose_opt.step()
        with torch.no_grad():
            rot, shift = m.poses(t_idx)
        with m.volume.shared():
            loss = m.squared_error(batch, rot, shift, n_points, parts=parts).mean()
        self.vol_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.dp.average_gradients(m.volume)
        self.vol_opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def switch_to_decoding(self, reason: str) -> None:
        """One pass picks every particle's best candidate (heads and kept pose); it seeds auto-decoding.

        From exploration, the kept poses are the candidates (the encoder has not been trained yet).
        """
        m = self.model
        if m.stage == Stage.EXPLORING:
            self.align_halves()
        if m.stage == Stage.ENCODING:
            m.encoder.eval()
            n_points = m.schedule.points(m.disk, Stage.ENCODING, m.epoch)
            block = self.dp.block(m.n)  # each process its block, gathered below
            for start in range(0, len(block), self.config.batch_size * 4):
                idx = block[start : start + self.config.batch_size * 4]
                batch = m.batch(idx)
                rot, shift = m.encoder(m.encoder_input(batch))
                err, rot, shift, win = m.best_candidates(idx, batch, rot, shift, n_points)
                m.semi.note(idx, err, rot, n_points)  # the unexplored particles' head margins
                ar = torch.arange(len(idx), device=self.device)
                m.best_rot[idx] = rot[ar, win].cpu()
                m.best_shift[idx] = shift[ar, win].cpu()
                m.best_head[idx] = win.cpu()
            self.dp.sync_blocks(distributed.particle_state(self.model, self.pose_opt), m.n)
        pose_rest(self.model, encoded=m.stage == Stage.ENCODING)  # audit and unsure: grid search
        if self.config.symmetry != "C1" and m.imposed is None:  # --symmetry: from here on, in its frame
            m.imposed = impose_symmetry(m, self.prev_rot)
        m.schedule.switch_epoch = m.epoch
        self.explore_sums = [None] * m.volume.copies
        m.stage = Stage.DECODING
        m.switch_reason = reason
        m.poses = ParticlePoses(m.best_rot, m.best_shift).to(self.device)
        self.pose_opt = self.pose_optimizer()
        if self.config.half_maps:
            m.volume.split()
        self.vol_opt = self.volume_optimizer()
        log.info("switched to auto-decoding at epoch %d: %s", m.epoch, reason)

    def _reseed(self, which: torch.Tensor, rot: torch.Tensor, shift: torch.Tensor) -> None:
        """Restart particles ``which`` from new poses; their Adam moments are zeroed."""
        assert self.model.poses is not None and self.pose_opt is not None
        self.model.poses.reseed(which, rot, shift)
        for state in self.pose_opt.state.values():
            for moment in state.values():
                if torch.is_tensor(moment) and moment.dim() == 2:
                    moment[which] = 0.0

    @torch.no_grad()
    def research_poses(self) -> None:
        """Re-solve the half maps from the current poses (``research.py``), then give every particle its
        best mate (``mates.py``), or else the wide search's best pose, whenever that fits better — scored,
        subset by subset, against half maps without the subset's own images (``research.HELD_OUT``).

        The mates (in-plane 180°, the view from the other side, the map's near 2-folds) are scored at the
        current radius against the map the pose steps see: a flipped particle's right pose is ~180° away,
        beyond any local step. The wide search then tests the pose (a mate's, if it moved) against the
        fine grid over a wide shift window, its best few refined: a pose the local steps cannot leave is
        replaced when a refined distant pose fits better at the current radius. The particles that move
        continue by local refinement. Run a few times in auto-decoding (``Schedule.research_epochs``):
        each round's better map brings more particles back (on 1BD2 at SNR 0.05 three rounds left 11 % of
        the particles beyond 90° where one left 14 %).
        """
        m = self.model
        assert m.poses is not None
        maps = maps_from_poses(m, self.dp)
        coarse_points = m.schedule.points(m.disk, Stage.EXPLORING, m.schedule.explore_epochs - 1)
        n_points = m.schedule.points(m.disk, Stage.DECODING, m.epoch)
        twofolds = map_twofolds(self.model)
        moved = flipped = far = 0
        block = self.dp.block(m.n)  # each process its block, gathered below
        for k in range(HELD_OUT):
            maps.install(m, without=k)
            part = block[held_out_subset(block) == k]
            for start in range(0, len(part), RESEARCH_BATCH):
                idx = part[start : start + RESEARCH_BATCH]
                counts = self._research_batch(idx, n_points, coarse_points, twofolds)
                moved, flipped, far = (a + b for a, b in zip((moved, flipped, far), counts, strict=True))
        maps.install(m)
        self.vol_opt = self.volume_optimizer()  # Adam's moments belong to the map it replaced
        self.dp.sync_blocks(distributed.particle_state(self.model, self.pose_opt), m.n)
        moved, flipped, far = (self.dp.sum_scalar(v) for v in (moved, flipped, far))
        m.research_moved, m.research_far = moved / m.n, far / m.n
        log.info(
            "global re-search at epoch %d moved %.1f%% of particles (%.1f%% to a mate, %.1f%% > %g°)",
            m.epoch,
            100 * moved / m.n,
            100 * flipped / m.n,
            100 * far / m.n,
            FAR_DEG,
        )

    def _research_batch(
        self, idx: np.ndarray, n_points: int, coarse_points: int, twofolds: list[torch.Tensor]
    ) -> tuple[int, int, int]:
        """One batch of a re-search round against the maps installed: (moved, to a mate only, moved far)."""
        m = self.model
        batch = m.batch(idx)
        rot, shift = m.poses(batch.idx)
        start_rot = rot
        with m.volume.frozen(m.reference_weight, m.reference_mask):
            err, mate_rot, mate_shift = score_hypotheses(m, batch, rot, shift, n_points, twofolds)
        best = err.argmin(1)
        to_mate = best > 0  # a mate beats the pose and its own local search
        ar = torch.arange(len(idx), device=self.device)
        if to_mate.any():
            self._reseed(batch.idx[to_mate], mate_rot[ar, best][to_mate], mate_shift[ar, best][to_mate])
            rot, shift = m.poses(batch.idx)
        now, wide_err, wide_rot, wide_shift = wide_search(m, batch, rot, shift, coarse_points, n_points)
        better = wide_err < now
        if better.any():
            self._reseed(batch.idx[better], wide_rot[better], wide_shift[better])
        after = torch.where(better[:, None, None], wide_rot, rot)  # the poses just reseeded
        far = int((torch.rad2deg(geodesic_distance(after, start_rot)) > FAR_DEG).sum())
        return int((better | to_mate).sum()), int((to_mate & ~better).sum()), far

    def research_due(self) -> bool:
        """Whether this epoch starts with a global re-search: one of ``Schedule.research_epochs``, and the
        first of them or one after a round that moved at least ``Schedule.research_again`` of the particles
        to another basin (a round that moves almost none is not worth another: at SNR 0.1 each costs about
        three epochs of auto-decoding and finds nothing)."""
        m = self.model
        epochs = m.schedule.research_epochs()
        if m.stage != Stage.DECODING or m.epoch not in epochs:
            return False
        return m.epoch == epochs[0] or (m.research_far or 0.0) >= m.schedule.research_again

    # ------------------------------------------------------------------------------------- reporting
