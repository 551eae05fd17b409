"""The engine's Adam optimisers. Both exist to cut fixed costs per step, which do not shrink with the batch
and so limit scaling over processes: the fused kernel on volume-sized grids, and a row-wise lazy Adam for
the per-particle poses (torch's SparseAdam spends ~1.3 ms a step on sparse-tensor bookkeeping; auto-decoding
makes five pose steps per batch)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam on ``params``: fused on CPU and CUDA (measured 4× faster on 2 × 64³ grids), else foreach."""
    if device.type in ("cpu", "cuda"):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


class RowAdam(torch.optim.Optimizer):
    """SparseAdam's lazy Adam (only the rows in a sparse gradient move; the state is the same, so
    checkpoints written with SparseAdam resume) with row indexing instead of sparse-tensor arithmetic."""

    def __init__(
        self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        """One update of every parameter with a sparse gradient (``closure`` is not supported)."""
        if closure is not None:
            raise ValueError("RowAdam does not take a closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.coalesce()  # the update is not linear: one row, one entry
                rows, g = grad.indices()[0], grad.values()
                if g.numel() == 0:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                m = state["exp_avg"][rows].lerp_(g, 1 - beta1)
                v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["exp_avg"][rows] = m
                state["exp_avg_sq"][rows] = v
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                p.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])), alpha=-step_size)
