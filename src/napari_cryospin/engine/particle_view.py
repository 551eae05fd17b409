"""A particle's pose picture from a run's model: its candidates scored against its own half map, the
projection at the winner and the view posterior; the live dock and the run explorer both draw it."""

from __future__ import annotations

import numpy as np
import torch

from ..model.likelihood import ImageBatch, searched_error, squared_error
from ..physics.fourier import frequency_grid_2d, ifftn_centered
from ..physics.shifts import centering_phase
from .events import ParticleView
from .posterior import refined_view_posterior, view_log_posterior
from .run_model import RunModel

POSTERIORS = ("refined", "grid")
"""How a view's posterior is computed: refined around the anchors, or on the plain HEALPix grid."""


@torch.no_grad()
def scored_view(
    model: RunModel,
    index: int,
    candidates: tuple[torch.Tensor, torch.Tensor, list[str]],
    *,
    errors: torch.Tensor | None = None,
    winner: int | None = None,
    path: np.ndarray | None = None,
    posterior: str | None = None,
    anchors: torch.Tensor | None = None,
    symmetry: tuple[str, np.ndarray] | None = None,
) -> ParticleView:
    """Particle ``index``'s picture for ``candidates`` (rotations (C, 3, 3), shifts (C, 2) px, labels).

    ``errors`` (C,): the candidates' errors when the caller has them (its shifts then used as given), else
    scored here with a shift search; ``winner``: the candidate shown (default: the lowest error);
    ``posterior``: one of :data:`POSTERIORS`, or None for none; ``anchors`` (A, 3, 3): where the refined
    posterior looks closer (default: every candidate).
    """
    batch = model.batch(np.array([index]))
    copy, n_points = model.copy_of(index), model.n_points()
    rot, shift, labels = candidates
    if errors is None:
        errors, shift = searched_error(
            model.volume, batch, rot[None], shift[None], model.offsets, model.disk, n_points, copy
        )
        errors, shift = errors[0], shift[0]
    win = int(errors.argmin()) if winner is None else winner
    log_post = zoom = None
    if posterior is not None:
        score = _posterior_score(model, batch, shift[win], max(float(errors.min()), 1e-6), n_points, copy)
        nside = model.schedule.posterior_nside
        if posterior == "refined":
            chosen = rot if anchors is None else anchors
            log_post, zoom = refined_view_posterior(score, chosen.cpu().double(), nside, device=model.device)
        else:
            log_post = view_log_posterior(score, nside=nside, device=model.device)
    mates = None
    if symmetry is not None and len(symmetry[1]) > 1:
        mates = np.asarray(symmetry[1][1:], np.float32) @ rot[win].cpu().numpy()
    return ParticleView(
        index=index,
        image=batch.images[0].cpu().numpy(),
        projection=projection(model, batch, rot[win], shift[win], copy),
        candidates=rot.cpu().numpy(),
        candidate_losses=errors.cpu().numpy(),
        winner=win,
        path=np.zeros((0, 3, 3), np.float32) if path is None else path,
        log_posterior=log_post,
        labels=labels,
        zoom=zoom,
        mates=mates,
        mates_group="" if mates is None else symmetry[0],
    )


def _posterior_score(
    model: RunModel, batch: ImageBatch, shift: torch.Tensor, sigma2: float, n_points: int, copy: int
):
    """Negative log-likelihood of rotations (R, 3, 3) for a one-particle ``batch`` at ``shift`` (2,) px,
    with the noise variance ``sigma2`` of its best candidate."""

    def score(rots: torch.Tensor) -> torch.Tensor:
        b = len(rots)
        many = ImageBatch(
            batch.idx.expand(b),
            batch.images.expand(b, -1, -1),
            batch.spectrum.expand(b, -1),
            batch.ctf.expand(b, -1),
            None if batch.whiten is None else batch.whiten.expand(b, -1),
        )
        e = squared_error(model.volume, many, rots, shift.expand(b, 2), model.disk, n_points, copy)
        return e * n_points / (2 * sigma2)

    return score


def projection(
    model: RunModel, batch: ImageBatch, rot: torch.Tensor, shift: torch.Tensor, copy: int
) -> np.ndarray:
    """The CTF-modulated (and, as the run scores it, whitened) shifted projection (L, L) of map copy
    ``copy`` at one pose (rot (3, 3), shift (2,) px) for the batch's first particle."""
    box = model.box
    k = frequency_grid_2d(box, model.device).reshape(-1, 2)
    full_ctf = torch.zeros(box * box, device=model.device)
    full_ctf[model.disk.flat] = batch.ctf[0] if batch.whiten is None else batch.ctf[0] / batch.whiten[0]
    h = model.volume.slices(rot[None], k, copy)[0].reshape(box, box)
    flipped = torch.roll(torch.flip(h, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))  # H(−k), even box
    f = 0.5 * (h + flipped) - 0.5j * (h - flipped)
    f = f.reshape(-1) * full_ctf * centering_phase(k / box, shift[None])[0].conj()
    return ifftn_centered(f.reshape(box, box), 2).real.cpu().numpy() * box
