"""Scoring a junk detector against a simulation's truth: which rows are junk, and the ROC AUC of a score.

``cryospin simulate`` marks junk in truth.star with ``rlnClassNumber`` 2 (empty picks, ice) and 3 (other
particles, aggregates); 1 is a particle. A run writes its junk score as ``rlnParticleSelectZScore``
(RELION's particle-sorting z-score: high means likely junk).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

JUNK_COLUMN = "rlnParticleSelectZScore"
"""The junk score column a run writes (high = junk)."""


def truth_junk(table: pd.DataFrame | None) -> np.ndarray | None:
    """(n,) bool junk rows from a truth table's ``rlnClassNumber`` (≠ 1), or None when it has none."""
    if table is None or "rlnClassNumber" not in table.columns:
        return None
    return table["rlnClassNumber"].to_numpy() != 1


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` (n,) for ``positive`` (n,) bool: P(score₊ > score₋), ties ½.

    The Mann–Whitney form: mean rank of the positives, from scipy's tie-averaged ranks.
    """
    score = np.asarray(score, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the ROC AUC needs both junk and particle rows")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
