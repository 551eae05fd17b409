"""A pose's confidence: its log-likelihood margin over the best rival pose, in nats (the particle table's
column, and what marks an encoder pose as unsure)."""

from __future__ import annotations

import numpy as np

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
