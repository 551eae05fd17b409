"""Per-particle junk scores: how well each image is explained by the map at its pose, under the noise model.

At the end of a run every particle is compared with its own half map at its final pose (the shift searched
again on the 1-px grid), in the whitened units of the likelihood (``model/noise.py``). With ``y`` the
image and ``m = CTF · slice`` the model on the likelihood's frequency disk:

- ``log_likelihood_ratio = (⟨y, m⟩ − ‖m‖²/2) / σ²``: the Gaussian log-likelihood at the pose minus that of
  the noise-only model (nats); a particle gains about ``‖m‖²/2σ²``, an empty pick about nothing;
- ``excess = (‖y − m‖² / P − σ²) / σ²``: residual power beyond the noise, per point; an aggregate or an
  ice blob leaves power the map cannot explain;
- σ² is the median residual power per point over all particles (the noise level of the whitened data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..model.likelihood import searched_error
from ..physics.fourier import fourier_to_hartley
from ..physics.shifts import centering_phase

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class FitTerms:
    """Per particle (n,): ``cross`` ⟨y, m⟩, ``model`` ‖m‖², ``obs`` ‖y‖², over ``points`` disk points."""

    cross: np.ndarray
    model: np.ndarray
    obs: np.ndarray
    points: int

    @property
    def sigma2(self) -> float:
        """Noise power per point: the median residual power per point over the particles."""
        return float(np.median((self.obs - 2 * self.cross + self.model) / self.points))

    def log_likelihood_ratio(self) -> np.ndarray:
        """(n,) log-likelihood at the pose minus the noise-only model's, in nats."""
        return (self.cross - self.model / 2) / self.sigma2

    def excess(self) -> np.ndarray:
        """(n,) residual power per point beyond the noise, relative to the noise."""
        s2 = self.sigma2
        return ((self.obs - 2 * self.cross + self.model) / self.points - s2) / s2


@torch.no_grad()
def fit_terms(engine: Engine, n_points: int) -> FitTerms:
    """:class:`FitTerms` of every particle at its current pose against its own map, on ``n_points`` points."""
    rot_all, shift_all = engine.current_poses()
    k = engine.disk.k[:n_points]
    cross, model_sq, obs_sq = (np.empty(engine.n) for _ in range(3))
    step = engine.schedule.explore_batch
    for start in range(0, engine.n, step):
        idx = np.arange(start, min(engine.n, start + step))
        batch = engine._batch(idx)
        rot = torch.as_tensor(rot_all[idx], dtype=torch.float32, device=engine.device)
        shift = torch.as_tensor(shift_all[idx], dtype=torch.float32, device=engine.device)
        for c, mask in engine._copy_masks(batch.idx):
            sub = batch.select(mask)
            _, best = searched_error(
                engine.volume, sub, rot[mask], shift[mask], engine.offsets, engine.disk, n_points, c
            )
            m = engine.volume.slices(rot[mask], k, c) * sub.ctf[:, :n_points]
            y = fourier_to_hartley(sub.spectrum[:, :n_points] * centering_phase(k / engine.disk.box, best))
            rows = idx[mask.cpu().numpy()]
            cross[rows] = (m * y).sum(-1).cpu().numpy()
            model_sq[rows] = (m * m).sum(-1).cpu().numpy()
            obs_sq[rows] = (y * y).sum(-1).cpu().numpy()
    return FitTerms(cross, model_sq, obs_sq, n_points)
