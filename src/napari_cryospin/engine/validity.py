"""Is the map real? Agreement of the two independently explored halves, and the run's verdict.

The halves start from separate blobs and never see each other's particles, so a structure they share
after alignment is in the data, not in the start; a run whose halves agree only on the blob's envelope
is flagged. Radii are in cycles per box (the same detail relative to the particle at any pixel size).
"""

from __future__ import annotations

import numpy as np

from ..diagnostics.ctf_check import CTFCheck
from ..metrics.fsc import fsc, soft_mask

AGREE_FRACTION = 0.5
"""The halves agree when their FSC stays ≥ 0.5 out to this fraction of exploration's top radius."""
SETTLED_FRACTION = 0.75
"""Exploration goes on past its planned epochs while the halves' FSC 0.5 falls short of this fraction of its
top radius. Measured at the end of 8 epochs: halves that had both found the structure agreed to 0.98–1.05
of it on the panel sets, ribosome70s and a box-128 set; a half still at chance beside a solved one, 0.66;
two halves at chance, 0.52."""


def half_map_mask(box: int) -> np.ndarray:
    """The soft sphere (D, D, D: radius 0.4·D, cosine edge 0.05·D) the half maps are compared under, and
    through which the pose steps see them: the FSC per shell then weighs the very map the poses use."""
    return soft_mask(box, 0.4 * box, 0.05 * box)


def masked_fsc(map_a: np.ndarray, map_b: np.ndarray) -> np.ndarray:
    """FSC per shell (0 … D/2) of two (D, D, D) maps under :func:`half_map_mask`."""
    mask = half_map_mask(map_a.shape[0])
    return fsc(map_a * mask, map_b * mask, 1.0)[1]


def radius_at(curve: np.ndarray, threshold: float) -> float:
    """Shell (cycles per box, interpolated) where ``curve`` first falls below ``threshold``."""
    below = np.flatnonzero(curve[1:] < threshold)
    if below.size == 0:
        return float(len(curve) - 1)
    i = int(below[0]) + 1
    v0, v1 = curve[i - 1], curve[i]
    return float(i - 1 + (v0 - threshold) / (v0 - v1)) if v0 != v1 else float(i)


def half_agreement(
    map_a: np.ndarray, map_b_aligned: np.ndarray, top_radius: float, restarted: dict | None = None
) -> dict:
    """How far (cycles per box) the aligned half maps agree at FSC 0.5, judged against ``top_radius``,
    the highest frequency exploration used; a plain dict (it goes into checkpoints and metrics.json).

    ``restarted``: a half restarted from the other's low-passed map (``reseed.py``); the halves then share
    that low band, so they must agree out to ``SETTLED_FRACTION`` of the top radius, not ``AGREE_FRACTION``.
    """
    curve = masked_fsc(map_a, map_b_aligned)
    r05 = radius_at(curve, 0.5)
    fraction = AGREE_FRACTION if restarted is None else SETTLED_FRACTION
    agree = bool(r05 >= fraction * top_radius)
    verdict = "agree" if agree else "DISAGREE"
    summary = (
        f"independent halves {verdict} after alignment: FSC ≥ 0.5 to {r05:.1f} of {top_radius:.1f} "
        "cycles per box"
    )
    if restarted is not None:
        summary += (
            f" (half {restarted['half']} restarted at epoch {restarted['epoch'] + 1} from the other's map "
            f"below {restarted['radius']:.0f} cycles per box)"
        )
    return {
        "fsc": curve.tolist(),
        "radius_fsc05": r05,
        "top_radius": float(top_radius),
        "agree": agree,
        "restarted": restarted,
        "summary": summary,
    }


def verdict(
    agreement: dict | None, final_radius: float, top_radius: float, ctf: CTFCheck, mates: str | None = None
) -> dict:
    """The run's validity: reliable when the images follow their CTFs, the independent halves agreed at the
    end of exploration, the final half maps agree (FSC 0.143) beyond half of exploration's top radius, and
    few particles fit a mate of their pose as well (``mates``: the mate check's warning, ``mates.py``).

    ``agreement`` None (the paper's path, or no half maps) means no independent check of the map was made.
    Halves that agree can still both hold the same mix of right and flipped particles: hence the mates.
    """
    reasons = (
        []
        if ctf.consistent
        else [f"{ctf.summary()}: check the defocus columns, their units and the pixel size"]
    )
    if agreement is None:
        reasons.append("the halves shared one map until the switch, so the resolution is optimistic")
    elif not agreement["agree"]:
        reasons.append(agreement["summary"])
    if final_radius < AGREE_FRACTION * top_radius:
        reasons.append(f"the final half maps agree only to {final_radius:.1f} cycles per box (FSC 0.143)")
    if mates is not None:
        reasons.append(mates)
    reliable = not reasons
    message = (
        "validity: the two independent halves agree and the images follow their CTFs"
        if reliable
        else "WARNING: the map is not reliable (" + "; ".join(reasons) + ")"
    )
    return {"reliable": reliable, "reasons": reasons, "ctf_check": ctf.to_dict(), "message": message}
