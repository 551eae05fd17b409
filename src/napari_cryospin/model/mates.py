"""Pseudo-symmetry mates of a map: the rotations S with ``V(S·p) ≈ V(p)`` that are not the identity.

A particle posed at R and at S·R gives nearly the same image when S is a pseudo-symmetry (a dimer's near-C2,
a ring's 60° step, an elongated particle's end-over-end flip). Exploration can split the particles between
such mates, and the map then averages them; testing every particle's mates against its own half map at
the refined radius lets the likelihood decide and the map break the false symmetry.
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry.rotations import axis_angle_to_matrix, geodesic_distance, random_rotations
from ..metrics.alignment import lowpass_crop, project_to_so3, rotation_scores


def map_mates(
    volume: np.ndarray, count: int, min_angle_deg: float = 30.0, n_coarse: int = 3000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` best distinct local maxima (k, 3, 3) of the map's self-correlation and their scores (k,).

    ``volume`` is a real-space (D, D, D) map. Rotations closer than ``min_angle_deg`` to the identity or to a
    better mate are left out. The correlation allows a translation (a pseudo-symmetry axis need not pass
    through the box centre; the particle's shift search absorbs the offset). No threshold: a map with no
    pseudo-symmetry still gets ``count`` mates, and the likelihood turns them down.
    """
    gen = torch.Generator().manual_seed(seed)
    vol = np.asarray(volume, np.float64)
    small = lowpass_crop(vol, 32, 0.5)
    small_f = torch.fft.rfftn(small)
    min_angle = np.deg2rad(min_angle_deg)

    def scored(rotations: torch.Tensor) -> torch.Tensor:
        """Self-correlation of each rotation; -inf within ``min_angle`` of the identity."""
        near = geodesic_distance(rotations, torch.eye(3).expand_as(rotations)) <= min_angle
        return rotation_scores(small, small_f, rotations).masked_fill(near, -np.inf)

    cands = random_rotations(n_coarse, generator=gen)
    scores = scored(cands)
    picked: list[torch.Tensor] = []
    for i in torch.argsort(scores, descending=True).tolist():
        if len(picked) == count:
            break
        r = cands[i]
        if not np.isfinite(float(scores[i])):
            break
        if all(float(geodesic_distance(r[None], p[None])[0]) > min_angle for p in picked):
            picked.append(r)
    mates, best_scores = [], []
    for r in picked:
        for spread in (0.06, 0.03):
            local = torch.cat([r[None], axis_angle_to_matrix(torch.randn(64, 3, generator=gen) * spread) @ r])
            s = scored(local)
            r = local[int(s.argmax())]
        mates.append(project_to_so3(r.double().numpy()))
        best_scores.append(float(s.max()))
    order = np.argsort(best_scores)[::-1]
    return np.stack(mates)[order].reshape(-1, 3, 3), np.asarray(best_scores)[order]
