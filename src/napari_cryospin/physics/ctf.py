"""Contrast transfer function in the project convention ``H = √(1−w²)·sin χ − w·cos χ``.

``χ(s) = π/2·Cs·λ³·s⁴ − π·λ·Δf(α)·s² − φ`` with RELION's astigmatism
``Δf(α) = (U+V)/2 + (U−V)/2 · cos 2(α − α_ast)``; H(0) = −w, so protein is dark, as in micrographs.
"""

from __future__ import annotations

import math

import torch


def electron_wavelength(voltage_kv: torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2642598 / torch.sqrt(v * (1 + v * 0.978466e-6))


def ctf_2d(
    freqs: torch.Tensor,
    defocus_u: torch.Tensor,
    defocus_v: torch.Tensor,
    defocus_angle: torch.Tensor,
    voltage: torch.Tensor,
    cs: torch.Tensor,
    amplitude_contrast: torch.Tensor,
    phase_shift: torch.Tensor | None = None,
    bfactor: torch.Tensor | None = None,
) -> torch.Tensor:
    """CTF values (n, P) at spatial frequencies ``freqs`` (P, 2) = (sx, sy) in 1/Å.

    Per-particle parameters are (n,) tensors: defocus in Å, angle in degrees, voltage in kV, Cs in mm,
    phase shift in degrees, B-factor in Å² (envelope ``exp(−B s²/4)``).
    """
    col = [t[:, None] for t in (defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast)]
    du, dv, ang, kv, cs_mm, w = col
    lam = electron_wavelength(kv)
    sx, sy = freqs[:, 0][None], freqs[:, 1][None]
    s2 = sx * sx + sy * sy
    alpha = torch.atan2(sy, sx)
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2 * (alpha - ang * math.pi / 180))
    chi = 0.5 * math.pi * (cs_mm * 1e7) * lam**3 * s2 * s2 - math.pi * lam * defocus * s2
    if phase_shift is not None:
        chi = chi - phase_shift[:, None] * math.pi / 180
    h = torch.sqrt(1 - w * w) * torch.sin(chi) - w * torch.cos(chi)
    if bfactor is not None:
        h = h * torch.exp(-bfactor[:, None] * s2 / 4)
    return h
