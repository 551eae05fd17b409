"""B-factor sharpening (Rosenthal & Henderson 2003): the map's amplitudes fall with frequency as
``exp(−B s² / 4)`` (s = 1/d); B comes from a straight line through the Guinier plot ``ln ⟨|F|⟩`` against
``s²`` between 10 Å and the resolution (slope = −B/4, so B = −4·slope), and the sharpened map is the
FSC-weighted map times ``exp(+B s² / 4)``, low-pass filtered at the resolution with a soft edge.

B here is the map's fall-off (positive); RELION prints the B-factor it applies, −B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shells import apply_per_shell, cosine_lowpass, shell_mean_amplitude

GUINIER_LOW_A = 10.0
"""The Guinier fit starts at this resolution (Å): below it the amplitudes follow the particle's shape."""
MIN_SHELLS = 3
"""Fewer shells between 10 Å and the resolution leave B unmeasured (0: no sharpening)."""


@dataclass
class GuinierFit:
    """B (Å², the map's fall-off; ≥ 0 for a blurred map), the fit's line and the shells it used."""

    bfactor: float
    intercept: float
    correlation: float
    shells: int

    def to_dict(self) -> dict:
        """For metrics.json; ``sharpening_bfactor`` is RELION's sign (the B applied, −B)."""
        return {
            "bfactor": self.bfactor,
            "sharpening_bfactor": -self.bfactor,
            "intercept": self.intercept,
            "correlation": self.correlation,
            "shells": self.shells,
        }


def fsc_weight(curve: np.ndarray) -> np.ndarray:
    """Rosenthal & Henderson's ``C_ref = √(2·FSC / (1 + FSC))`` per shell (0 where FSC ≤ 0): the share of
    the full map's amplitude that is signal."""
    f = np.clip(np.asarray(curve, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(2 * f / (1 + f))


def guinier_fit(vol: np.ndarray, voxel: float, resolution: float, low: float = GUINIER_LOW_A) -> GuinierFit:
    """Fit ``ln ⟨|F|⟩ = a − (B/4)·s²`` over the shells of ``vol`` (D, D, D; ``voxel`` Å) from ``low`` to
    ``resolution`` Å."""
    box = vol.shape[0]
    amp = shell_mean_amplitude(vol)
    s = np.arange(len(amp)) / (box * voxel)
    use = (s >= 1 / low) & (s <= 1 / resolution) & (amp > 0)
    if use.sum() < MIN_SHELLS:
        return GuinierFit(0.0, 0.0, 0.0, int(use.sum()))
    x, y = s[use] ** 2, np.log(amp[use])
    slope, intercept = np.polyfit(x, y, 1)
    return GuinierFit(float(-4 * slope), float(intercept), float(np.corrcoef(x, y)[0, 1]), int(use.sum()))


def sharpen(
    vol: np.ndarray, voxel: float, resolution: float, fsc_curve: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, GuinierFit]:
    """The sharpened map (D, D, D float32) of ``vol``, FSC-weighted by ``fsc_curve`` (shells 0 … D/2) and
    low-pass filtered at ``resolution``, and the Guinier fit it undoes.

    The fit is made on the masked map weighted by the (masked) FSC, as RELION: ``C_ref`` then scales each
    shell to its signal's amplitude. Unmasked, the solvent's noise raises the high shells, which the masked
    FSC does not weigh down, and B comes out low (116 instead of 147 Å² on a known-pose map)."""
    weights = fsc_weight(fsc_curve)
    fit = guinier_fit(apply_per_shell(vol * mask, weights), voxel, resolution)
    weighted = apply_per_shell(vol, weights)
    box = vol.shape[0]
    s2 = (np.arange(box // 2 + 1) / (box * voxel)) ** 2
    boosted = apply_per_shell(weighted, np.exp(fit.bfactor * s2 / 4))
    return cosine_lowpass(boosted, voxel, resolution), fit
