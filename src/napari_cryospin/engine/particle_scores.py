"""Per-particle scores written as extra poses.star columns: winning head, loss and pose confidence (margin).

They let a finished run be sorted and filtered by particle (the napari particle table reads them); RELION
keeps unknown labels as they are, so the STAR still reads there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..geometry.rotations import geodesic_distance
from .events import Stage
from .run_results import CONFIDENCE_COLUMN, HEAD_COLUMN, LOSS_COLUMN

if TYPE_CHECKING:
    from .engine import Engine

DISTINCT_DEG = 15.0
"""Candidates closer than this to the pose count as the same pose, not as an alternative to it."""


def pose_confidence(errors: np.ndarray, distances_deg: np.ndarray, n_points: int) -> np.ndarray:
    """Log-likelihood margin (n,) in nats of the pose over its best rival: a candidate > DISTINCT_DEG away.

    ``errors`` (n, 1 + C): mean squared residuals of the pose (column 0) and of C candidates;
    ``distances_deg`` (n, C): each candidate's angle to the pose. The likelihood is Gaussian with the
    pose's residual as noise variance, as in the posterior view. Near 0 or negative: a rival pose fits
    about as well (an ambiguous particle); NaN: every candidate agrees with the pose.
    """
    sigma2 = np.maximum(errors[:, :1], 1e-12)
    gap = (errors[:, 1:] - errors[:, :1]) * n_points / (2.0 * sigma2)
    gap = np.where(distances_deg > DISTINCT_DEG, gap, np.inf).min(axis=1)
    return np.where(np.isfinite(gap), gap, np.nan)


@torch.no_grad()
def particle_scores(engine: Engine, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Each particle's winning head (0-based; ``heads`` = the kept/search pose, −1 = none), its loss at the
    final pose and its pose confidence: the margin over the encoder heads' rival candidates
    (see :func:`pose_confidence`)."""
    rot, shift = engine.current_poses()
    stage = Stage.DECODING if engine.stage == Stage.DONE else engine.stage
    n_points = engine.schedule.points(engine.disk, stage, min(engine.epoch, engine.config.epochs - 1))
    engine.encoder.eval()
    scores = torch.zeros(engine.n, 2, dtype=torch.float64)  # (loss, confidence); each process its block
    block = engine.dp.block(engine.n)
    for start in range(0, len(block), batch_size):
        idx = block[start : start + batch_size]
        batch = engine._batch(idx)
        heads_rot, heads_shift = engine.encoder(engine._encoder_input(batch))
        pose_rot = torch.from_numpy(rot[idx]).to(engine.device)[:, None]
        pose_shift = torch.from_numpy(shift[idx]).to(engine.device)[:, None]
        cand_rot = torch.cat([pose_rot, heads_rot], 1)
        err, _ = engine._score_candidates(batch, cand_rot, torch.cat([pose_shift, heads_shift], 1), n_points)
        err = err.cpu().double().numpy()
        angle = torch.rad2deg(geodesic_distance(pose_rot.expand_as(heads_rot).cpu(), heads_rot.cpu()))
        scores[idx, 0] = torch.from_numpy(err[:, 0])
        scores[idx, 1] = torch.from_numpy(pose_confidence(err, angle.double().numpy(), n_points))
    engine.dp.sync_blocks([scores], engine.n)
    return {
        HEAD_COLUMN: engine.best_head.cpu().numpy().astype(np.int64),
        LOSS_COLUMN: scores[:, 0].numpy(),
        CONFIDENCE_COLUMN: scores[:, 1].numpy(),
    }
