"""Semi-amortized posing (``--explore-subset N``): the grid search explores a random subset, the encoder
trained on it poses the rest, and only the particles it is unsure about, plus a fixed audit subset, are
grid-searched. At large N this replaces O(rotations × shifts) per image by one forward pass for most of them.

The subset is drawn within each gold-standard half (in proportion), so both halves are explored
independently as before. At the switch the engine's pass over every particle gives each unexplored one its
best head; :meth:`SemiAmortized.note` keeps the log-likelihood margin of that head over the best rival head
(``confidence.pose_confidence``), and ``amortized_posing.pose_rest`` grid-searches the audit subset,
learns from it which margins mark wrong encoder poses (:func:`unsure_threshold`), and grid-searches the
particles below that margin. Everything is measured and kept in :attr:`SemiAmortized.report`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..geometry.rotations import geodesic_distance
from .confidence import pose_confidence
from .events import Stage

log = logging.getLogger(__name__)

AUDIT_SHARE = 0.1
"""Share of the unexplored particles in the audit subset (at most ``AUDIT_MAX``): 300 of 3000 measure a
10 % wrong-pose share to ±2 %, which is what the unsure threshold is learnt from."""

AUDIT_MAX = 1000
"""Largest audit subset: the engine's other measurements from a sample (polarity, noise, prior) use 1000."""


def explored_count(subset: int, n: int) -> int:
    """How many particles exploration and auto-encoding see: ``subset`` when 0 < subset < n, else all n."""
    return subset if 0 < subset < n else n


def stratified_choice(
    pool: np.ndarray, halves: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` members of ``pool`` (sorted), drawn within each half in proportion to its share of it."""
    groups = [pool[halves[pool] == c] for c in np.unique(halves[pool])]
    take = [count * len(g) // len(pool) for g in groups]
    take[0] += count - sum(take)
    return np.sort(
        np.concatenate([rng.choice(g, k, replace=False) for g, k in zip(groups, take, strict=True)])
    )


def unsure_threshold(confidence: np.ndarray, wrong: np.ndarray) -> float:
    """The margin (nats) at or below which an encoder pose is sent to the grid search, learnt from the audit.

    ``confidence`` (a,): each audit particle's winning-head margin (NaN: every head agrees, i.e. +inf);
    ``wrong`` (a,): the grid found a better pose more than ``DISTINCT_DEG`` away. The cut makes the fewest
    audit mistakes (wrong poses left unflagged + right poses flagged): the equal-cost Bayes rule, so a
    margin is flagged where wrong poses outnumber right ones, with no level to tune, and the share of wrong
    poses counts (an encoder that is nearly always wrong gets everything flagged). Ties go to the cut that
    flags fewer. No wrong audit pose gives −inf (flag none).
    """
    c = np.where(np.isnan(confidence), np.inf, confidence)
    cuts = np.concatenate([[-np.inf], np.unique(c)])
    flagged = c[None, :] <= cuts[:, None]  # (cuts, a)
    mistakes = (~flagged & wrong).sum(1) + (flagged & ~wrong).sum(1)
    return float(cuts[int(np.argmin(mistakes))])  # argmin takes the first (lowest) cut of a tie


class SemiAmortized:
    """Which particles are explored, and the posing of the rest at the switch (inactive: every particle)."""

    def __init__(self, n: int, halves: np.ndarray, subset: int, heads: int, seed: int):
        self.n, self.heads = n, heads
        self.active = explored_count(subset, n) < n
        everyone = np.arange(n)
        rng = np.random.default_rng([seed, 13])
        self.explored = stratified_choice(everyone, halves, subset, rng) if self.active else everyone
        self.is_explored = np.zeros(n, bool)
        self.is_explored[self.explored] = True
        rest = np.flatnonzero(~self.is_explored)
        audit = min(AUDIT_MAX, max(1, round(AUDIT_SHARE * len(rest)))) if len(rest) else 0
        self.is_audit = np.zeros(n, bool)
        if audit:
            self.is_audit[stratified_choice(rest, halves, audit, rng)] = True
        # Each particle's winning-head margin (nats) from the switch's pass; NaN: not measured.
        self.confidence = torch.full((n,), float("nan"), dtype=torch.float64)
        self.report: dict | None = None

    @property
    def size(self) -> int:
        """How many particles are explored."""
        return len(self.explored)

    def order(self, perm: np.ndarray, stage: Stage) -> np.ndarray:
        """The epoch's permutation, keeping only the explored subset before the switch (its order kept)."""
        if not self.active or stage == Stage.DECODING:
            return perm
        return perm[self.is_explored[perm]]

    def posed(self, stage: Stage) -> np.ndarray:
        """(n,) which particles have a pose: the explored subset before the switch, all of them after."""
        if not self.active or stage == Stage.DECODING:
            return np.ones(self.n, bool)
        return self.is_explored.copy()

    @torch.no_grad()
    def note(self, idx: np.ndarray, errors: torch.Tensor, rotations: torch.Tensor, n_points: int) -> None:
        """Keep the winning head's margin over its rivals for the unexplored particles of a switch batch.

        ``errors`` (B, M + 1) and ``rotations`` (B, M + 1, 3, 3): the heads' candidates and the kept pose
        (last, ignored: unexplored particles have none), as ``Engine._best_candidates`` returns them.
        """
        if not self.active:
            return
        err = errors[:, : self.heads].double().cpu()
        rot = rotations[:, : self.heads].cpu()
        win = err.argmin(1)
        ar = torch.arange(len(idx))
        # The winner first, then every head (the winner itself is 0° away, so it is no rival).
        table = torch.cat([err[ar, win][:, None], err], 1)
        angle = torch.rad2deg(geodesic_distance(rot[ar, win][:, None].expand_as(rot), rot))
        margin = pose_confidence(table.numpy(), angle.double().numpy(), n_points)
        rows = ~self.is_explored[idx]
        self.confidence[torch.as_tensor(idx[rows])] = torch.from_numpy(margin[rows])

    def summary(
        self,
        spent: float,
        unsure: np.ndarray,
        cut: float,
        angle: np.ndarray,
        wrong: np.ndarray | None,
        posing_s: float,
    ) -> dict:
        """What metrics.json records: shares, the audit's encoder-vs-grid angles, and the time saved
        (``spent``: seconds of exploration and auto-encoding).

        ``wrong`` None: the encoder posed nobody (a switch during exploration), so there is no audit.
        """
        rest = int((~self.is_explored).sum())
        audit = self.is_audit if wrong is not None else np.zeros(self.n, bool)
        audit_angle = angle[audit]
        flagged = unsure | audit if wrong is not None else ~self.is_explored
        missed = None
        if wrong is not None and wrong[audit].any():
            conf = np.nan_to_num(self.confidence.numpy(), nan=np.inf)
            missed = float((wrong & audit & (conf > cut)).sum() / wrong[audit].sum())
        # Exploration and auto-encoding iterated over the subset only; their cost per epoch is linear in the
        # particles, so the whole set would have cost elapsed × n / subset. The posing here is the price.
        saved = spent * (self.n / self.size - 1) - posing_s
        median = float(np.median(audit_angle)) if len(audit_angle) else None
        shown = "no audit (switched during exploration)" if median is None else f"audit median {median:.1f}°"
        summary = (
            f"{self.size} explored, {rest} posed by the encoder: {unsure.sum() / max(1, rest):.1%} unsure, "
            f"{shown} encoder–grid, {int(flagged.sum())} grid-searched; ~{saved:.0f} s saved"
        )
        return {
            "explored": self.size,
            "encoder_posed": rest if wrong is not None else 0,
            "audit": int(audit.sum()),
            "audit_median_angle_deg": median,
            "audit_p95_angle_deg": float(np.percentile(audit_angle, 95)) if len(audit_angle) else None,
            "audit_wrong_share": float(wrong[audit].mean()) if wrong is not None and audit.any() else None,
            "audit_wrong_missed_share": missed,
            "unsure_cut_nats": cut,
            "unsure_share": float(unsure.sum() / max(1, rest)),
            "grid_searched": int(flagged.sum()),
            "posing_s": posing_s,
            "explore_and_encode_s": spent,
            "time_saved_s_estimate": saved,
            "summary": summary,
        }

    # ------------------------------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        """What a checkpoint keeps (the subsets follow from the seed): the margins and the report."""
        return {"confidence": self.confidence, "report": self.report}

    def restore(self, state: dict | None) -> None:
        """Inverse of :meth:`state` (None: a checkpoint from before semi-amortized posing)."""
        if state is not None:
            self.confidence, self.report = state["confidence"], state["report"]
