"""The stages' steps: scoring candidate poses against each particle's own half map, exploration's grid
search, auto-encoding, the switch, auto-decoding and its global re-search, the halves' alignment."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..metrics.alignment import align_maps
from ..model.likelihood import (
    ImageBatch,
    searched_error,
    squared_error,
)
from ..model.poses import ParticlePoses
from ..model.search import forget, grid_search, insert_weighted
from ..reconstruction import solve_map
from . import distributed
from .events import Stage
from .mates import map_twofolds, score_hypotheses
from .validity import half_agreement

log = logging.getLogger(__name__)


class Stages:
    """One step of each stage (mixed into :class:`~.engine.Engine`, which calls them from its loop)."""

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
