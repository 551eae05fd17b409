"""Per-particle pose parameters for auto-decoding (paper Sec. 4.2 and Supp. A).

Each particle keeps its seed rotation R₀ (the best head at the switch) and learns an axis-angle
perturbation ω and a shift; ``R = R_δ(ω) · R₀`` with the Taylor-stable Rodrigues map. Rows are sparse
embeddings so that Adam only moves the particles of the current batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry.rotations import axis_angle_to_matrix


class ParticlePoses(nn.Module):
    """Rotations and shifts of all n particles, optimised row by row."""

    def __init__(self, base_rotations: torch.Tensor, shifts: torch.Tensor):
        super().__init__()
        n = base_rotations.shape[0]
        self.register_buffer("base", base_rotations.clone().float())
        self.omega = nn.Embedding(n, 3, sparse=True)
        self.shift = nn.Embedding(n, 2, sparse=True)
        with torch.no_grad():
            self.omega.weight.zero_()
            self.shift.weight.copy_(shifts)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotations (B, 3, 3) and shifts (B, 2) of particles ``idx``."""
        r_delta = axis_angle_to_matrix(self.omega(idx))
        return r_delta @ self.base[idx], self.shift(idx)

    @torch.no_grad()
    def reseed(self, idx: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor) -> None:
        """Restart particles ``idx`` from new poses (perturbation zeroed)."""
        self.base[idx] = rotations.to(self.base)
        self.omega.weight[idx] = 0.0
        self.shift.weight[idx] = shifts.to(self.shift.weight)

    @torch.no_grad()
    def all_poses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every particle's current rotation and shift."""
        return axis_angle_to_matrix(self.omega.weight) @ self.base, self.shift.weight.clone()
