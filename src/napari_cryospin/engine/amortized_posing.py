"""Semi-amortized posing at the switch: the particles the encoder posed (``amortized.py``) are checked by a
fine-grid search, the audit subset always and the others where the encoder was unsure."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..geometry.rotations import geodesic_distance
from .amortized import unsure_threshold
from .confidence import DISTINCT_DEG
from .events import Stage

if TYPE_CHECKING:
    from .run_model import RunModel

log = logging.getLogger(__name__)


@torch.no_grad()
def pose_rest(model: RunModel, encoded: bool) -> None:
    """Grid-search the audit subset and the unsure unexplored particles, keeping the better pose.

    ``encoded``: the switch's pass gave the unexplored particles encoder poses (a switch during
    exploration did not: then every one of them is grid-searched). Call after that pass, in every process.
    """
    semi = model.semi
    if not semi.active:
        return
    t0 = time.perf_counter()
    dp = model.dp
    rest = ~semi.is_explored
    angle = torch.full((semi.n,), float("nan"), dtype=torch.float64)
    better = torch.zeros(semi.n, dtype=torch.float64)
    rows = [model.best_rot, model.best_shift, model.best_head]
    if not encoded:
        _search(model, rest, angle, better)
        dp.sync_blocks(rows, semi.n)
        cut, unsure, wrong = float("nan"), rest & ~semi.is_audit, None
    else:
        dp.sync_blocks([semi.confidence], semi.n)
        _search(model, semi.is_audit, angle, better)
        dp.sync_blocks([*rows, angle, better], semi.n)
        wrong = (better.numpy() > 0) & (angle.numpy() > DISTINCT_DEG)
        cut = unsure_threshold(semi.confidence.numpy()[semi.is_audit], wrong[semi.is_audit])
        unsure = rest & ~semi.is_audit & (np.nan_to_num(semi.confidence.numpy(), nan=np.inf) <= cut)
        _search(model, unsure, angle, better)
        dp.sync_blocks(rows, semi.n)
    posing_s = dp.sum_scalar(time.perf_counter() - t0) / dp.world
    semi.report = semi.summary(model.elapsed, unsure, cut, angle.numpy(), wrong, posing_s)
    log.info("semi-amortized posing: %s", semi.report["summary"])


def _search(model: RunModel, which: np.ndarray, angle: torch.Tensor, better: torch.Tensor) -> None:
    """Fine-grid search of this process's block of ``which`` against each particle's own half map, at
    exploration's top radius; a grid pose that fits better than the current one replaces it.

    Records each particle's angle (degrees) between its current and its grid pose, and whether it moved.
    """
    sch = model.schedule
    n_points = model.n_points(Stage.EXPLORING, sch.explore_epochs - 1)
    block = model.dp.block(model.n)
    block = block[which[block]]
    for start in range(0, len(block), sch.explore_batch):
        idx = block[start : start + sch.explore_batch]
        batch = model.batch(idx)
        cpu_idx = torch.as_tensor(idx)
        rot = model.best_rot[cpu_idx].to(model.device)
        shift = model.best_shift[cpu_idx].to(model.device)
        now, grid_err, grid_rot, grid_shift = model.fine_grid_search(batch, rot, shift, n_points)
        grid_rot, grid_shift = grid_rot.cpu(), grid_shift.cpu()
        angle[cpu_idx] = torch.rad2deg(geodesic_distance(model.best_rot[cpu_idx], grid_rot)).double()
        moved = (grid_err < now).cpu()
        better[cpu_idx] = moved.double()
        model.best_rot[cpu_idx[moved]] = grid_rot[moved]
        model.best_shift[cpu_idx[moved]] = grid_shift[moved]
        model.best_head[cpu_idx[moved]] = model.config.heads
