"""What a snapshot shows: the chosen particle's candidates and posterior, the map, the heads' shares, the
status line."""

from __future__ import annotations

import numpy as np
import torch

from ..model.search import grid_search
from .events import ParticleView, Snapshot, Stage
from .particle_view import scored_view


class Views:
    """The engine's snapshots (mixed into :class:`~.engine.Engine`)."""

    @torch.no_grad()
    def _particle_view(self, with_posterior: bool) -> ParticleView:
        """The chosen particle's candidates as the stage has them: exploration's best grid poses, the
        heads' and the kept pose while auto-encoding, the pose (and its path) while auto-decoding."""
        m = self.model
        i = min(max(self._selected, 0), m.n - 1)
        idx = np.array([i])
        posterior = "refined" if with_posterior else None
        symmetry = m.imposed_symmetry()  # the viewer marks the winner's mates under the imposed group
        if m.stage == Stage.EXPLORING:
            batch = m.batch(idx)
            found = grid_search(
                m.volume,
                batch,
                m.grids[m.schedule.explore_grid(m.epoch)],
                self.stages.explore_centres(batch.idx),
                m.offsets,
                m.disk,
                m.n_points(),
                m.schedule.explore_top_k,
                copy=m.copy_of(i),
                shift_sigma=m.schedule.shift_prior,
            )
            rot, shift = found.rotations[0], found.shifts[0]
            labels = [f"grid {j + 1}" for j in range(len(rot))]
            return scored_view(
                m, i, (rot, shift, labels), errors=found.errors[0], posterior=posterior, symmetry=symmetry
            )
        if m.poses is None:
            m.encoder.eval()
            rot, shift = m.encoder(m.encoder_input(m.batch(idx)))
            rot, shift, has = m.with_kept(idx, rot, shift)
            labels = [f"head {j + 1}" for j in range(self.config.heads)] + ["kept"]
            keep = len(labels) if bool(has[0]) else len(labels) - 1  # no kept pose yet: heads only
            return scored_view(
                m, i, (rot[0, :keep], shift[0, :keep], labels[:keep]), posterior=posterior, symmetry=symmetry
            )
        rot, shift = m.poses(torch.as_tensor(idx, device=m.device))
        path = np.asarray(self._paths.get(i, []), np.float32).reshape(-1, 3, 3)
        return scored_view(m, i, (rot, shift, ["pose"]), path=path, posterior=posterior, symmetry=symmetry)

    def _snapshot(self, loss: float, ips: float, full: bool, with_posterior: bool = False) -> Snapshot:
        m = self.model
        full, with_posterior = full and self.dp.main, with_posterior and self.dp.main  # others show nothing
        evaluated = [h for h in m.history if h["resolution"] is not None]
        last = evaluated[-1] if evaluated else {}
        fsc = last.get("fsc")
        epoch_size = m.n if self.perm is None else len(self.perm)  # the explored subset before the switch
        return Snapshot(
            epoch=m.epoch,
            step=self.step,
            stage=m.stage,
            progress=min(1.0, (m.epoch + self.pos / epoch_size) / m.schedule.epochs),
            elapsed_s=m.elapsed,
            images_per_s=ips,
            loss=loss,
            voxel_size=m.particles.pixel_size,
            volume=m.volume_array() if full else None,
            head_fractions=m.head_fractions(),
            particle=self._particle_view(with_posterior) if full and self.views else None,
            resolution=last.get("resolution"),
            fsc=None if fsc is None else (np.asarray(fsc[0]), np.asarray(fsc[1])),
            history=list(m.history),
            message=self._message(loss, ips, last.get("resolution")),
            polarity=m.polarity.summary(),
            halves=self._halves_status(),
            epochs=m.schedule.epochs,
        )

    def _message(self, loss: float, ips: float, res: float | None) -> str:
        r = f", {res:.1f} Å" if res else ""
        halves = f" · {self._halves_status()}" if self.model.agreement is not None else ""
        m = self.model
        epochs = m.schedule.epochs
        return (
            f"epoch {min(m.epoch + 1, epochs)}/{epochs} · {m.stage.value} · "
            f"{ips:.0f} img/s · loss {loss:.4f}{r}{halves} · {m.polarity.summary()}"
        )

    def _halves_status(self) -> str:
        """ "halves agree", a warning, or "" before the independent halves are compared."""
        if self.model.agreement is None:
            return ""
        return (
            "halves agree" if self.model.agreement["agree"] else "WARNING: halves disagree (map not reliable)"
        )
