"""Per-particle scores written as extra poses.star columns: winning head, loss and pose confidence (margin).

They let a finished run be sorted and filtered by particle (the napari particle table reads them); RELION
keeps unknown labels as they are, so the STAR still reads there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..geometry.rotations import geodesic_distance
from .confidence import pose_confidence
from .events import Stage
from .run_results import CONFIDENCE_COLUMN, HEAD_COLUMN, LOSS_COLUMN

if TYPE_CHECKING:
    from .run_model import RunModel


@torch.no_grad()
def particle_scores(model: RunModel, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Each particle's winning head (0-based; ``heads`` = the kept/search pose, −1 = none), its loss at the
    final pose and its pose confidence: the margin over the encoder heads' rival candidates
    (see :func:`pose_confidence`)."""
    rot, shift = model.current_poses()
    stage = Stage.DECODING if model.stage == Stage.DONE else model.stage
    n_points = model.schedule.points(model.disk, stage, min(model.epoch, model.schedule.epochs - 1))
    model.encoder.eval()
    scores = torch.zeros(model.n, 2, dtype=torch.float64)  # (loss, confidence); each process its block
    block = model.dp.block(model.n)
    for start in range(0, len(block), batch_size):
        idx = block[start : start + batch_size]
        batch = model.batch(idx)
        heads_rot, heads_shift = model.encoder(model.encoder_input(batch))
        pose_rot = torch.from_numpy(rot[idx]).to(model.device)[:, None]
        pose_shift = torch.from_numpy(shift[idx]).to(model.device)[:, None]
        cand_rot = torch.cat([pose_rot, heads_rot], 1)
        err, _ = model.score_candidates(batch, cand_rot, torch.cat([pose_shift, heads_shift], 1), n_points)
        err = err.cpu().double().numpy()
        angle = torch.rad2deg(geodesic_distance(pose_rot.expand_as(heads_rot).cpu(), heads_rot.cpu()))
        scores[idx, 0] = torch.from_numpy(err[:, 0])
        scores[idx, 1] = torch.from_numpy(pose_confidence(err, angle.double().numpy(), n_points))
    model.dp.sync_blocks([scores], model.n)
    return {
        HEAD_COLUMN: model.best_head.cpu().numpy().astype(np.int64),
        LOSS_COLUMN: scores[:, 0].numpy(),
        CONFIDENCE_COLUMN: scores[:, 1].numpy(),
    }
