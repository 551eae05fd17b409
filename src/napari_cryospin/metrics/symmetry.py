"""Pose errors of a (pseudo-)symmetric particle: each true pose counts up to the particle's symmetry.

If the map obeys ``V(S·p) ≈ V(p)`` for a rotation S (map frame, x y z), the projection
``P_R(x, y) = ∫ V(R·(x, y, z)) dz`` equals ``P_{S·R}``: the poses ``S·R_gt`` explain a particle's image as
well as ``R_gt`` does. So the error of an estimated pose is its distance to the nearest of these mates,
after one global alignment (and hand).
"""

from __future__ import annotations

import numpy as np

from .alignment import MIRROR, AlignmentResult, _angles_deg, project_to_so3


def _operators(operators: np.ndarray | None) -> np.ndarray:
    """The operators (k, 3, 3) with the identity first and duplicates (within 1°) removed."""
    ops = [np.eye(3)]
    for s in np.asarray(operators if operators is not None else np.zeros((0, 3, 3)), np.float64):
        if s.shape != (3, 3) or not np.allclose(s @ s.T, np.eye(3), atol=1e-4) or np.linalg.det(s) < 0:
            raise ValueError(f"symmetry operators must be proper rotations (3, 3), got {s.tolist()}")
        if min(_angles_deg(s[None], o[None])[0] for o in ops) > 1.0:
            ops.append(s)
    return np.stack(ops)


def symmetric_errors(
    r_est: np.ndarray, g: np.ndarray, a: np.ndarray, operators: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per particle: the smallest angle (°) between ``R_est`` and ``A·S·G`` over the operators S, and
    which S (index) gave it; ``g`` (n, 3, 3) are the true poses (mirrored when the hand differs)."""
    errors = np.stack([_angles_deg(a @ s @ g, r_est) for s in operators])
    best = errors.argmin(axis=0)
    return errors[best, np.arange(len(g))], best


def align_rotations_symmetric(
    r_est: np.ndarray, r_gt: np.ndarray, operators: np.ndarray | None = None, seed: int = 0
) -> AlignmentResult:
    """``align_rotations`` where each true pose R may be replaced by any mate ``S·R``.

    ``operators`` (k, 3, 3) are the particle's symmetry rotations in the map frame of the truth (the
    identity is added); with none this gives the plain alignment's errors. A is the best of the mean and
    single-particle candidates under the symmetric median error, refined by reweighted least squares with
    each particle's nearest mate; both hands are tried, the lower median wins.
    """
    r_est = np.asarray(r_est, dtype=np.float64)
    r_gt = np.asarray(r_gt, dtype=np.float64)
    if r_est.shape != r_gt.shape or r_est.ndim != 3 or r_est.shape[1:] != (3, 3) or len(r_est) == 0:
        raise ValueError(f"need two non-empty (n, 3, 3) pose arrays, got {r_est.shape} and {r_gt.shape}")
    ops = _operators(operators)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(r_gt), size=min(64, len(r_gt)), replace=False)
    best = None
    for flip in (False, True):
        g = MIRROR @ r_gt @ MIRROR if flip else r_gt
        s_all = MIRROR @ ops @ MIRROR if flip else ops  # the mirrored map's symmetry is F·S·F
        candidates = [project_to_so3(np.einsum("nij,nkj->ik", r_est, g))]
        candidates += [r_est[i] @ (s @ g[i]).T for i in pick for s in s_all]
        medians = [np.median(symmetric_errors(r_est, g, a, s_all)[0]) for a in candidates]
        a = candidates[int(np.argmin(medians))]
        for _ in range(20):
            _, mate = symmetric_errors(r_est, g, a, s_all)
            g_mate = s_all[mate] @ g
            resid = np.linalg.norm(r_est - a @ g_mate, axis=(1, 2))
            w = 1.0 / np.maximum(resid, 1e-6)
            a_new = project_to_so3(np.einsum("n,nij,nkj->ik", w, r_est, g_mate))
            converged = np.abs(a_new - a).max() < 1e-10
            a = a_new
            if converged:
                break
        errors, _ = symmetric_errors(r_est, g, a, s_all)
        result = AlignmentResult(a, flip, errors, float(errors.mean()), float(np.median(errors)))
        if best is None or result.median < best.median:
            best = result
    return best
