"""What a snapshot shows: the chosen particle's candidates and posterior, the map, the heads' shares, the
status line."""

from __future__ import annotations

import numpy as np
import torch

from ..model.likelihood import (
    ImageBatch,
    searched_error,
    squared_error,
)
from ..model.search import grid_search
from ..physics.fourier import frequency_grid_2d, ifftn_centered
from ..physics.shifts import centering_phase
from ..posterior import refined_view_posterior
from .events import ParticleView, Snapshot, Stage


class Views:
    """The engine's snapshots (mixed into :class:`~.engine.Engine`)."""

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


def _flip(h: torch.Tensor) -> torch.Tensor:
    """H(−k) on a centred even grid (the −L/2 row and column map onto themselves)."""
    return torch.roll(torch.flip(h, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
