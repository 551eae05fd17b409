"""The masked FSC corrected for the mask by phase randomisation (Chen et al. 2013; RELION's postprocess).

A mask correlates the halves at every frequency by itself (both are multiplied by the same smooth
function). Randomising the phases of both halves beyond the shell where their unmasked FSC first falls
below 0.8 destroys their true correlation there; what the masked FSC of the randomised halves still shows
is the mask's. Beyond that shell (+ 2, past the randomisation's own edge artefacts, as RELION does)
``FSC_true = (FSC_masked − FSC_random) / (1 − FSC_random)``, and 0 where the random one is higher.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft

from ..metrics.fsc import resolution_at
from .shells import rfft_radius, shell_fsc

RANDOMISE_BELOW = 0.8
"""Phases are randomised from the first shell where the unmasked FSC falls below this (RELION's default)."""
MARGIN_SHELLS = 2
"""Shells past the randomisation's start that keep the masked FSC as it is (RELION)."""


@dataclass
class CorrectedFSC:
    """FSC curves per shell 0 … D/2 (frequency in 1/Å) of two half maps, and the corrected one's 0.143."""

    frequency: np.ndarray
    unmasked: np.ndarray
    masked: np.ndarray
    masked_randomised: np.ndarray
    corrected: np.ndarray
    randomised_from: int | None  # shell; None when the unmasked FSC never fell below 0.8 (no correction)
    resolution: float  # Å at corrected FSC 0.143

    def to_dict(self) -> dict:
        """The curves as metrics.json's ``final.fsc_curves`` holds them (``reported``: the corrected one)."""
        return {
            "frequency": self.frequency.tolist(),
            "unmasked": self.unmasked.tolist(),
            "masked": self.masked.tolist(),
            "masked_randomised": self.masked_randomised.tolist(),
            "corrected": self.corrected.tolist(),
            "reported": "corrected",
            "randomised_from_shell": self.randomised_from,
        }


def randomise_phases(vol: np.ndarray, from_shell: int, rng: np.random.Generator) -> np.ndarray:
    """``vol`` (D, D, D) with the phase of every Fourier coefficient at |k| ≥ ``from_shell`` (cycles per box)
    drawn uniformly in [0, 2π), amplitudes kept; the map stays real."""
    spectrum = fft.rfftn(vol)
    beyond = rfft_radius(vol.shape) >= from_shell
    # The phases of white noise's transform: uniform, and Friedel-symmetric where rfftn stores both halves
    # of a plane (kx = 0, D/2), so the amplitudes survive the inverse transform exactly.
    phases = np.angle(fft.rfftn(rng.normal(size=vol.shape)))[beyond]
    spectrum[beyond] = np.abs(spectrum[beyond]) * np.exp(1j * phases)
    return fft.irfftn(spectrum, s=vol.shape)


def first_shell_below(curve: np.ndarray, threshold: float) -> int | None:
    """The first shell > 0 where ``curve`` falls below ``threshold`` (None: it never does)."""
    below = np.flatnonzero(np.asarray(curve)[1:] < threshold)
    return int(below[0]) + 1 if below.size else None


def mask_corrected_fsc(
    half_a: np.ndarray, half_b: np.ndarray, mask: np.ndarray, voxel: float, seed: int = 0
) -> CorrectedFSC:
    """Unmasked, masked, phase-randomised masked and corrected FSC of two (D, D, D) half maps under
    ``mask`` (D, D, D, values 0 … 1); ``voxel`` in Å."""
    box = half_a.shape[0]
    freq = np.arange(box // 2 + 1) / (box * voxel)
    unmasked, masked = shell_fsc(half_a, half_b), shell_fsc(half_a * mask, half_b * mask)
    start = first_shell_below(unmasked, RANDOMISE_BELOW)
    if start is None:
        random, corrected = np.zeros_like(masked), masked.copy()
    else:
        rng = np.random.default_rng(seed)
        rand_a, rand_b = randomise_phases(half_a, start, rng), randomise_phases(half_b, start, rng)
        random = shell_fsc(rand_a * mask, rand_b * mask)
        corrected = masked.copy()
        tail = np.arange(len(masked)) >= start + MARGIN_SHELLS
        true = (masked - random) / np.maximum(1.0 - random, 1e-6)
        corrected[tail] = np.where(random[tail] > masked[tail], 0.0, true[tail])
    return CorrectedFSC(
        freq, unmasked, masked, random, corrected, start, resolution_at(freq, corrected, 0.143)
    )
