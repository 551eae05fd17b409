"""When to leave auto-encoding: a criterion for "the pose posterior has become uni-modal enough".

The paper leaves the switch open and notes that switching late is safer than early. We switch when,
between two consecutive epochs, most particles keep their winning head *and* their winning pose moves
little — i.e. the encoder has stopped hopping between modes — or when the encoding budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AutoSwitch:
    """Stability thresholds; every value is a fraction or an angle, never tied to one dataset."""

    min_epochs: int = 4
    head_stability: float = 0.9
    pose_change_deg: float = 6.0
    max_fraction: float = 0.6

    def should_switch(
        self, epochs_done: int, total_epochs: int, stable_heads: float | None, median_change_deg: float | None
    ) -> tuple[bool, str]:
        """Decide after ``epochs_done`` encoding epochs; returns (switch?, reason)."""
        if epochs_done >= max(1, round(self.max_fraction * total_epochs)):
            return True, f"encoding budget of {self.max_fraction:.0%} of the epochs reached"
        if epochs_done < self.min_epochs or stable_heads is None or median_change_deg is None:
            return False, ""
        if stable_heads >= self.head_stability and median_change_deg <= self.pose_change_deg:
            return True, (
                f"poses settled: {stable_heads:.0%} of particles kept their head, "
                f"median pose change {median_change_deg:.1f}°"
            )
        return False, ""
