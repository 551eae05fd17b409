"""Per-particle junk scores: how well each image is explained by the map at its pose, under the noise model.

At the end of a run every particle is compared, at its final pose (the shift searched again on the 1-px
grid against its own half map), with the *other* half's map once the halves share a frame: a particle's
own half has fit its noise, which lifts junk and particles alike (on the realistic set, the map's
correlation with particles stays at 0.17 in shells with no signal), so the held-out half separates them
better (ROC AUC 0.904 against 0.897 on the same run). Before alignment, or with one map, the own map is
used. Comparisons are in the whitened units of the likelihood (``model/noise.py``), out to exploration's
top radius (cycles per box, so the same detail at any pixel size). With ``y`` the image and
``m = CTF · slice`` the model there:

- ``correlation = ⟨y, m⟩ / (‖y‖ ‖m‖)``, the junk score: empty picks, ice, other particles and aggregates
  correlate less with the map than particles do (ROC AUC 0.96 against a known-pose map at SNR 0.05 with
  coloured noise, against 0.94 for the log-likelihood ratio and 0.62 for the residual's excess power;
  docs/method.md);
- ``z = (median − f) / s`` on Fisher's ``f = artanh(correlation)`` (the transform that makes sample
  correlations near-normal with a spread that does not shrink towards 1), with ``s`` the spread of the
  upper side (84th percentile − median): junk lies on the low side, so the upper side measures the
  particles' own spread whatever the junk share (below one half); written as ``rlnParticleSelectZScore``
  (RELION: high = likely junk). On the raw correlation a junk-free stack at high SNR (median 0.95) had
  8.5 % flagged, 1.4 % with the transform;
- with ``--junk auto`` the particles with ``z > Z_JUNK`` are left out of the final maps (see
  :data:`Z_JUNK` for what it catches and costs);
- ``log_likelihood_ratio = (⟨y, m⟩ − ‖m‖²/2) / σ²`` (nats): the Gaussian log-likelihood at the pose minus
  that of the noise-only model, σ² the median residual power per point; written as
  ``rlnLogLikeliContribution``.
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
    from .run_model import RunModel

KEPT_STAR = "particles_kept.star"
"""The particles not scored as junk, with poses, written beside poses.star."""

Z_JUNK = 2.75
"""Particles whose correlation lies more than this many upper-side spreads below the median are junk.

A junk-free stack must keep its particles (≤ 1 % lost): at 2.0, junk-free runs lost 4.4 % (ribosome70s,
whose close-to-focus images correlate less), 2.5 % (a box-128 set), 2.0 % (a T cage); at 2.75 at most
0.74 %. The price is junk caught: on a realistic 1BD2 set at SNR 0.1 with 12 % junk, 70 % at 2.0, 37 % at
2.75 (0.70 % and 0.05 % of its particles lost)."""


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

    def correlation(self) -> np.ndarray:
        """(n,) normalised correlation of image and model, in [−1, 1]."""
        return self.cross / np.sqrt(np.maximum(self.model * self.obs, 1e-30))


@torch.no_grad()
def fit_terms(model: RunModel, n_points: int) -> FitTerms:
    """:class:`FitTerms` of every particle at its current pose on ``n_points`` points, against the other
    half's map when the halves share a frame, else its own (see the module doc)."""
    rot_all, shift_all = model.current_poses()
    held_out = model.volume.copies == 2 and model.halves_aligned
    k = model.disk.k[:n_points]
    terms = torch.zeros(model.n, 3, dtype=torch.float64)  # (cross, model, obs); each process its block
    block = model.dp.block(model.n)
    step = model.schedule.explore_batch
    for start in range(0, len(block), step):
        idx = block[start : start + step]
        batch = model.batch(idx)
        rot = torch.as_tensor(rot_all[idx], dtype=torch.float32, device=model.device)
        shift = torch.as_tensor(shift_all[idx], dtype=torch.float32, device=model.device)
        for c, mask in model.copy_masks(batch.idx):
            sub = batch.select(mask)
            _, best = searched_error(
                model.volume, sub, rot[mask], shift[mask], model.offsets, model.disk, n_points, c
            )
            m = model.volume.slices(rot[mask], k, 1 - c if held_out else c) * sub.ctf[:, :n_points]
            y = fourier_to_hartley(sub.spectrum[:, :n_points] * centering_phase(k / model.disk.box, best))
            rows = torch.from_numpy(idx[mask.cpu().numpy()])
            terms[rows] = torch.stack([(m * y).sum(-1), (m * m).sum(-1), (y * y).sum(-1)], 1).cpu().double()
    model.dp.sync_blocks([terms], model.n)
    cross, model_sq, obs_sq = terms.numpy().T
    return FitTerms(cross, model_sq, obs_sq, n_points)


@dataclass
class JunkScores:
    """Per particle (n,): ``correlation``, its robust ``z`` (high = junk), ``log_likelihood_ratio`` and
    ``junk`` (z > :data:`Z_JUNK`); ``radius`` is where they were measured (cycles per box)."""

    correlation: np.ndarray
    z: np.ndarray
    log_likelihood_ratio: np.ndarray
    junk: np.ndarray
    radius: float

    def columns(self) -> dict[str, np.ndarray]:
        """RELION columns for poses.star."""
        return {"rlnLogLikeliContribution": self.log_likelihood_ratio, "rlnParticleSelectZScore": self.z}

    def summary(self, left_out: bool) -> dict:
        """Plain-JSON record for metrics.json."""
        return {
            "junk": int(self.junk.sum()),
            "particles": len(self.junk),
            "left_out": left_out,
            "z_threshold": Z_JUNK,
            "radius": self.radius,
            "median_correlation": float(np.median(self.correlation)),
        }


def correlation_z(correlation: np.ndarray) -> np.ndarray:
    """:func:`robust_z` of Fisher's ``artanh(correlation)`` (n,): the junk z-score (high = worse)."""
    return robust_z(np.arctanh(np.clip(correlation, -1 + 1e-6, 1 - 1e-6)))


def robust_z(values: np.ndarray) -> np.ndarray:
    """(median − values) / (84th percentile − median) (n,): junk-proof standard scores (high = worse)."""
    median = float(np.median(values))
    spread = max(float(np.percentile(values, 84.13)) - median, 1e-12)
    return (median - values) / spread


def write_kept(path, model: RunModel, scores: JunkScores, poses: tuple[np.ndarray, np.ndarray]) -> int:
    """Write the particles not scored as junk, with their ``poses`` (rotations (n, 3, 3), shifts (n, 2) px:
    the ones the final maps used) and scores, as a RELION STAR; their count."""
    from ..data.poses_out import write_poses_star

    keep = ~scores.junk
    rot, shift = poses
    columns = {name: values[keep] for name, values in scores.columns().items()}
    write_poses_star(path, model.particles.subset(keep), rot[keep], shift[keep], columns)
    return int(keep.sum())


def score_junk(model: RunModel) -> JunkScores:
    """Score every particle at its final pose against the held-out half's map (see the module doc)."""
    sch = model.schedule
    radius = min(max(sch.explore_radii), 0.8 * sch.max_radius)  # exploration's top radius
    terms = fit_terms(model, model.disk.count(radius))
    corr = terms.correlation()
    z = correlation_z(corr)
    return JunkScores(corr, z, terms.log_likelihood_ratio(), z > Z_JUNK, radius)
