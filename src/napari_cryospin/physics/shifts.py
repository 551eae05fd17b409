"""In-plane shifts as Fourier phases, with RELION's origin sign (``I(x) = P(x + s)``)."""

from __future__ import annotations

import math

import torch


def centering_phase(k: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Phase ``exp(−2πi k·s)`` (n, P) that turns an image's spectrum into its centred projection's.

    ``k`` (P, 2) in cycles per pixel, ``shifts`` (n, 2) in pixels (rlnOrigin sign); the conjugate
    displaces a centred projection to where the particle sits in the image.
    """
    angle = -2 * math.pi * (shifts @ k.T)
    return torch.polar(torch.ones_like(angle), angle)
