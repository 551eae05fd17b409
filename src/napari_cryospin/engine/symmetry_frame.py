"""A point group imposed from the switch on (``--symmetry``): the C1 run's half maps tell where the group's
axes lie; map and poses are carried into the group's RELION frame (axes through the box centre), and
every map is read through the group from then on.

Imposed from exploration's first, blob-like maps a group settles on a wrong symmetric map whose halves
still agree (docs/method.md, "Symmetry"); after exploration and auto-encoding in C1 the map has its
shape, and the group only has to be found in it, as RELION's ``relion_align_symmetry`` does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..metrics.alignment import FrameChange, rotate_volume
from ..metrics.symmetry_detect import PSEUDO, group_frame
from ..metrics.translation import translate

if TYPE_CHECKING:
    from .run_model import RunModel

log = logging.getLogger(__name__)

IMPOSE_SCORE = PSEUDO
"""Least score of the asked group in the C1 map (relative FSC to its rotated copies) for it to be imposed:
below it the map does not show the group, and imposing it would average different views together."""


@torch.no_grad()
def impose_symmetry(model: RunModel, prev_rot: torch.Tensor | None) -> dict:
    """Find ``model.config.symmetry``'s axes in the model's map, carry map, kept poses and ``prev_rot``
    (n, 3, 3) into its frame and impose it; returns the record metrics.json keeps (``imposed`` False, with
    the reason, when the map does not show the group)."""
    group, volume = model.config.symmetry, model.volume
    half_a = volume.real_space(0).cpu().numpy()
    half_b = volume.real_space(volume.copies - 1).cpu().numpy()
    score, frame, centre = group_frame(half_a, half_b, group, model.config.seed)
    record = {
        "group": group,
        "score": round(score, 4),
        "frame": frame.tolist(),
        "centre_voxels": centre.tolist(),
    }
    if score < IMPOSE_SCORE:
        record.update(
            imposed=False,
            reason=f"the map at the switch shows {group} only to {score:.2f} (< {IMPOSE_SCORE})",
        )
        log.warning("--symmetry %s not imposed: %s; the run goes on in C1", group, record["reason"])
        return record
    change = FrameChange(frame, False, -frame.T @ centre, np.empty(0))  # new(q) = map(frame·q + centre)
    for copy in range(volume.copies):
        turned = translate(rotate_volume(volume.real_space(copy).cpu().numpy(), frame), change.translation)
        volume.set_from_real_space(torch.from_numpy(turned).to(model.device), copy=copy)
    rot, shift = change.poses(model.best_rot.double().numpy(), model.best_shift.double().numpy())
    model.best_rot.copy_(torch.from_numpy(rot))
    model.best_shift.copy_(torch.from_numpy(shift))
    if prev_rot is not None:  # a change of frame is not a change of pose (auto-switch's measure)
        prev_rot.copy_(torch.from_numpy(np.einsum("ji,njk->nik", frame, prev_rot.double().numpy())))
    model.impose(group)
    record["imposed"] = True
    log.info("%s imposed from the switch on (score %.2f in the C1 map)", group, score)
    return record
