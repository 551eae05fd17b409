"""B-factor sharpening (Rosenthal & Henderson 2003): amplitudes fall as ``exp(−B s² / 4)`` (s = 1/d); B is
fitted to the Guinier plot ``ln ⟨|F|⟩`` against ``s²`` from 10 Å to the resolution, and only where that range
is long enough to hold a Guinier region; the sharpened map is the FSC-weighted map times ``exp(+B s² / 4)``,
low-pass filtered at the resolution.

B here is the map's fall-off (positive); RELION prints the B-factor it applies, −B.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .shells import apply_per_shell, cosine_lowpass, shell_mean_amplitude

log = logging.getLogger(__name__)

GUINIER_LOW_A = 10.0
"""The fit starts at this resolution (Å): below it the amplitudes follow the particle's shape (RELION's
default ``--autob_lowres``)."""
MIN_SPAN_S2 = 0.01
"""The fit must reach this far in s² (Å⁻²) past its start: from 10 Å, a resolution of 7.07 Å or better.
Over a shorter range a ±0.1 wobble of ln⟨|F|⟩ (the protein's own spectrum, the box's edge) moves B by
more than 80 Å², and the line follows those instead of the fall-off."""
MIN_SHELLS = 5
"""…and hold at least this many shells (three degrees of freedom left after the line's two)."""
MAX_BOOST = 100.0
"""Sharpening may raise the amplitudes at the resolution at most this many times (``exp(B/4d²)``): by
Rosenthal & Henderson's ``ln N = ln N₀ + B/(2d²)`` that is √(N/N₀), so 100× takes 10⁴ times the particles
the resolution would need without a fall-off. A guard against a runaway fit, not a measurement."""


@dataclass
class GuinierFit:
    """A Guinier fit (Å², the map's fall-off; None when the range held none) and the B that sharpening
    undoes (``applied``: the fitted B, 0 or capped, ``reason`` saying why)."""

    fitted: float | None
    applied: float
    fit_range: tuple[float, float]  # Å, from low to high resolution
    shells: int
    intercept: float | None = None
    correlation: float | None = None
    reason: str | None = None  # why B was not fitted, or not applied as fitted

    @property
    def bfactor(self) -> float:
        """The B (Å²) volume_sharpened.mrc undoes: 0 when not sharpened."""
        return self.applied

    def summary(self) -> str:
        """One line for the user: the B applied, or why not the fitted one."""
        applied = f"B {self.applied:.0f} Å²" if self.applied else "not sharpened"
        return applied if self.reason is None else f"{applied}: {self.reason}"

    def to_dict(self) -> dict:
        """For metrics.json: ``bfactor`` is the fitted B (null when not fitted), ``sharpening_bfactor`` the
        applied one in RELION's sign (−B)."""
        return {
            "bfactor": self.fitted,
            "applied_bfactor": self.applied,
            "sharpening_bfactor": -self.applied,
            "fit_range_A": list(self.fit_range),
            "shells": self.shells,
            "intercept": self.intercept,
            "correlation": self.correlation,
            "reason": self.reason,
        }


def fsc_weight(curve: np.ndarray) -> np.ndarray:
    """Rosenthal & Henderson's ``C_ref = √(2·FSC / (1 + FSC))`` per shell (0 where FSC ≤ 0): the share of
    the full map's amplitude that is signal."""
    f = np.clip(np.asarray(curve, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(2 * f / (1 + f))


def _too_short(resolution: float, low: float, shells: int) -> str | None:
    """Why the range from ``low`` to ``resolution`` Å holds no Guinier region to fit (None: it does)."""
    best = 1 / math.sqrt(1 / low**2 + MIN_SPAN_S2)
    if 1 / resolution**2 - 1 / low**2 < MIN_SPAN_S2:
        return (
            f"the resolution ({resolution:.2f} Å) leaves no Guinier region past {low:.0f} Å to fit (it must "
            f"be {best:.2f} Å or better); FSC-weighted and low-pass filtered only"
        )
    if shells < MIN_SHELLS:
        return (
            f"{shells} shells from {low:.0f} Å to {resolution:.2f} Å are too few for a Guinier fit (at least "
            f"{MIN_SHELLS}); FSC-weighted and low-pass filtered only"
        )
    return None


def _plausible(fitted: float, resolution: float) -> tuple[float, str | None]:
    """The B to apply for a fitted one, and why it differs (None: it does not)."""
    if fitted < 0:
        return 0.0, (
            f"the fitted B ({fitted:.0f} Å²) is negative: the amplitudes rise with frequency, and undoing "
            "that would blur the map; FSC-weighted and low-pass filtered only"
        )
    cap = 4 * resolution**2 * math.log(MAX_BOOST)
    if fitted > cap:
        boost = math.exp(fitted / (4 * resolution**2))
        return cap, (
            f"the fitted B ({fitted:.0f} Å²) would raise the amplitudes at {resolution:.1f} Å "
            f"{boost:.0f}-fold; capped at {cap:.0f} Å² ({MAX_BOOST:.0f}-fold)"
        )
    return fitted, None


def guinier_fit(vol: np.ndarray, voxel: float, resolution: float, low: float = GUINIER_LOW_A) -> GuinierFit:
    """Fit ``ln ⟨|F|⟩ = a − (B/4)·s²`` over the shells of ``vol`` (D, D, D; ``voxel`` Å) from ``low`` to
    ``resolution`` Å where that range is long enough, and the B to apply."""
    box = vol.shape[0]
    amp = shell_mean_amplitude(vol)
    s = np.arange(len(amp)) / (box * voxel)
    use = (s >= 1 / low) & (s <= 1 / resolution) & (amp > 0)
    shells = int(use.sum())
    short = _too_short(resolution, low, shells)
    if short is not None:
        return GuinierFit(None, 0.0, (low, resolution), shells, reason=short)
    x, y = s[use] ** 2, np.log(amp[use])
    slope, intercept = np.polyfit(x, y, 1)
    fitted = float(-4 * slope)
    applied, reason = _plausible(fitted, resolution)
    correlation = float(np.corrcoef(x, y)[0, 1])
    return GuinierFit(fitted, applied, (low, resolution), shells, float(intercept), correlation, reason)


def sharpen(
    vol: np.ndarray, voxel: float, resolution: float, fsc_curve: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, GuinierFit]:
    """The sharpened map (D, D, D float32) of ``vol``, FSC-weighted by ``fsc_curve`` (shells 0 … D/2) and
    low-pass filtered at ``resolution``, and the Guinier fit it undoes (logged; a warning when not as fitted).

    The fit is made on the masked map weighted by the (masked) FSC, as RELION: ``C_ref`` then scales each
    shell to its signal's amplitude. Unmasked, the solvent's noise raises the high shells, which the masked
    FSC does not weigh down, and B comes out low (116 instead of 147 Å² on a known-pose map)."""
    weights = fsc_weight(fsc_curve)
    fit = guinier_fit(apply_per_shell(vol * mask, weights), voxel, resolution)
    (log.info if fit.reason is None else log.warning)("volume_sharpened.mrc: %s", fit.summary())
    weighted = apply_per_shell(vol, weights)
    box = vol.shape[0]
    s2 = (np.arange(box // 2 + 1) / (box * voxel)) ** 2
    boosted = apply_per_shell(weighted, np.exp(fit.applied * s2 / 4))
    return cosine_lowpass(boosted, voxel, resolution), fit
