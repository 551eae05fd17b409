"""The engine's Adam: the fused kernel where torch has one, since on volume-sized grids the per-op update
is a fixed cost per step that does not shrink with the batch (it limited scaling over processes)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam on ``params``: fused on CPU and CUDA (measured 4× faster on 2 × 64³ grids), else foreach."""
    if device.type in ("cpu", "cuda"):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)
