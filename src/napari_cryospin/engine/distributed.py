"""Data parallelism over ``torch.distributed`` (torchrun): every process runs the same epochs on a share of
each batch; map sums and gradients are all-reduced, and each particle's per-particle state is gathered.

Started by ``torchrun --nproc-per-node K cryospin reconstruct …``: the process group is read from
torchrun's environment (NCCL on CUDA, gloo otherwise). Every process walks the same global batches (the
permutation depends on the seed only), takes its share of each one (balanced within each half, so every
process holds members of every half the batch holds) and weights its gradients and sums so that they add
up to the one-process ones: the run follows the one-process run up to the order of floating-point sums,
for any number of processes. In auto-decoding the two gold-standard halves share no parameter, so with an
even number of processes each half's map belongs to half the processes (rank % 2 = half): they take only
that half's particles, reduce its gradients among themselves alone (not at all with 2 processes), and
every process takes each half's map and Adam moments from its owners at the epoch's end. After each step
the rows of the batch's per-particle state (best poses, pose parameters and their Adam moments) are copied
from the process that computed them to all others, so every process holds the whole (n × small) state;
checkpoints hold it in input order and resume in any number of processes.
In one process every method is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

_SYNC_ROWS = 65536
"""Rows gathered per collective in a full-state gather (bounds its buffer at any particle count)."""

_GATHER_MAX = 262144
"""Largest all-gathered buffer (elements over all processes) for a small all-reduce over gloo."""

_REDUCERS = {
    dist.ReduceOp.SUM: lambda parts: parts.sum(0),
    dist.ReduceOp.MAX: lambda parts: parts.amax(0),
}


class DataParallel:
    """This process's place in the run (``rank`` of ``world``) and the collectives the engine calls."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world = rank, world
        self.device = device if device is not None else torch.device("cpu")
        self.main = rank == 0
        self.grad_weight = 1.0  # this process's share of the current batch's mean gradients
        self.sum_weight = 1.0  # the factor on its share of the batch's sums
        self.local_share = 1.0  # len(local) / len(batch): rescales per-particle (not reduced) gradients
        self._owner: np.ndarray | None = None  # which process computed each position of the batch
        self.by_half = False  # the last split gave this process particles of its own half only
        self._half_groups: list[Any] = []  # each half's owners' process group (with 4 or more processes)

    @property
    def active(self) -> bool:
        """True when more than one process takes part."""
        return self.world > 1

    @property
    def owns_halves(self) -> bool:
        """True when the halves can be owned by disjoint sets of processes (an even number of them)."""
        return self.active and self.world % 2 == 0

    def join_half_groups(self) -> None:
        """Create each half's owners' process group; every process calls it once, right after joining."""
        if self.owns_halves and self.world > 2:
            self._half_groups = [dist.new_group(list(range(h, self.world, 2))) for h in (0, 1)]

    # ---------------------------------------------------------------------------------------- batches
    def split(self, idx: np.ndarray, halves: np.ndarray, by_half: bool = False) -> np.ndarray:
        """This process's particles of the global batch ``idx`` (positions kept in batch order).

        Within each half the members are dealt out in turn, so every process holds members of every half
        the batch holds; a batch with a half of fewer members than processes is computed whole by every
        process (weights 1/world), so no process ever has an empty share. ``by_half`` (two map copies, an
        even number of processes): the members of half h are dealt out among its owners only, and a share
        may be empty.
        """
        self.by_half = by_half and self.owns_halves
        if not self.active:
            return idx
        groups = np.asarray(halves)[idx]
        if self.by_half:
            owner = np.empty(len(idx), np.int64)
            for half in (0, 1):
                where = np.flatnonzero(groups == half)
                owner[where] = half + 2 * (np.arange(len(where)) % (self.world // 2))
            self._owner = owner
            local = idx[owner == self.rank]
            self.grad_weight = self.local_share = len(local) / len(idx)
            self.sum_weight = 1.0
            return local
        owner = np.empty(len(idx), np.int64)
        for half in np.unique(groups):
            where = np.flatnonzero(groups == half)
            owner[where] = np.arange(len(where)) % self.world
        counts = [np.count_nonzero(groups == h) for h in np.unique(groups)]
        if min(counts) < self.world:
            self._owner = np.zeros(len(idx), np.int64)
            self.grad_weight = self.sum_weight = 1.0 / self.world
            self.local_share = 1.0
            return idx
        self._owner = owner
        local = idx[owner == self.rank]
        self.grad_weight, self.sum_weight = len(local) / len(idx), 1.0
        self.local_share = len(local) / len(idx)
        return local

    def block(self, n: int) -> np.ndarray:
        """This process's contiguous block of ``range(n)``, for passes over every particle."""
        return np.array_split(np.arange(n), self.world)[self.rank]

    # ---------------------------------------------------------------------------------- collectives
    def _all_reduce(self, tensor: torch.Tensor, op: Any = None, group: Any = None) -> torch.Tensor:
        """Sum (or ``op``) of ``tensor`` over the processes (of ``group``), on the tensor's own device.

        Over gloo a small tensor is all-gathered and reduced in rank order: gloo's all-reduce costs a
        fixed ~2 ms per call on a 2-core machine against ~1 ms for the gather, and the engine makes
        dozens of small ones per step (BatchNorm statistics, gradients, per-particle rows).
        """
        op = dist.ReduceOp.SUM if op is None else op
        size = self.world if group is None else dist.get_world_size(group)
        comm = tensor.to(self.device) if self.device.type == "cuda" else tensor.cpu()
        if comm.device.type == "cpu" and comm.numel() * size <= _GATHER_MAX and op in _REDUCERS:
            parts = comm.new_empty(size * comm.numel())
            dist.all_gather_into_tensor(parts, comm.contiguous().reshape(-1), group=group)
            comm = _REDUCERS[op](parts.view(size, *comm.shape))
        else:
            dist.all_reduce(comm, op=op, group=group)
        return comm.to(tensor.device)

    def sum_accumulator(self, acc: Any, count: int) -> tuple[Any, float]:
        """The batch's gridded sums (``num``, ``den``) and particle count over all processes."""
        if not self.active:
            return acc, count
        w = self.sum_weight
        num = self._all_reduce(torch.view_as_real(acc.num * w).contiguous())
        den = self._all_reduce(acc.den * w)
        total = self._all_reduce(torch.tensor([count * w], dtype=torch.float64))
        return type(acc)(torch.view_as_complex(num), den), float(total[0])

    def sum_blocks(self, acc: Any) -> Any:
        """Gridded sums (``num``, ``den``) of disjoint blocks of particles, added over the processes."""
        if not self.active:
            return acc
        num = self._all_reduce(torch.view_as_real(acc.num).contiguous())
        return type(acc)(torch.view_as_complex(num), self._all_reduce(acc.den.clone()))

    def sum_scalar(self, value: float) -> float:
        """``value`` summed over the processes (one float)."""
        if not self.active:
            return value
        return float(self._all_reduce(torch.tensor([value], dtype=torch.float64))[0])

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true when it is true in any process (stop and switch act in all at the same step)."""
        if not self.active:
            return flags
        got = self._all_reduce(
            torch.tensor([float(f) for f in flags], dtype=torch.float64), dist.ReduceOp.MAX
        )
        return tuple(bool(v) for v in got)

    def average_gradients(self, *modules: nn.Module) -> None:
        """Make each dense gradient the batch's: Σ over processes of ``grad_weight`` × local gradient.

        After a ``by_half`` split the sum runs over this half's owners only: the gradient of its own map
        copy is then the batch's, and that of the other copy (zero here) is never used.
        """
        if not self.active:
            return
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if self.by_half and not self._half_groups:  # one owner per half: nothing to add
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(self.grad_weight)
            return
        group = self._half_groups[self.rank % 2] if self.by_half else None
        has = [float(p.grad is not None) for p in params]  # summed with the gradients: one collective
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * self.grad_weight
                for p in params
            ]
            + [torch.tensor(has)]
        )
        flat = self._all_reduce(flat, group=group)
        start = 0
        for p, h in zip(params, flat[len(flat) - len(params) :].tolist(), strict=True):
            size = p.numel()
            if h:  # a gradient in some process: theirs summed (absent ones counted as zero)
                p.grad = flat[start : start + size].view_as(p).clone()
            start += size

    def scale_local_gradients(self, *modules: nn.Module) -> None:
        """Rescale per-particle gradients (not reduced: each row belongs to one process) to the batch mean."""
        if not self.active or self.local_share == 1.0:
            return
        for m in modules:
            for p in m.parameters():
                if p.grad is not None:
                    p.grad = p.grad * self.local_share

    def broadcast(self, *modules: nn.Module) -> None:
        """Give every process process 0's parameters and buffers (as DDP does before training)."""
        if not self.active:
            return
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                comm = t.data.to(self.device) if self.device.type == "cuda" else t.data.cpu()
                dist.broadcast(comm, src=0)
                with torch.no_grad():  # in place on the tensor itself: caches keyed on its version see it
                    t.copy_(comm.to(t.device))

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """``[fn(x) for x in items]``, each item computed by one process (in turn) and the results shared;
        ``fn`` must not call collectives, and its results must pickle."""
        items = list(items)
        if not self.active:
            return [fn(x) for x in items]
        mine = {i: fn(x) for i, x in enumerate(items) if i % self.world == self.rank}
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, mine)
        return [everyone[i % self.world][i] for i in range(len(items))]

    def sync_copies(self, volume: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Give every process each half's map copy and its Adam moments from the half's first owner
        (process h for half h): after ``by_half`` steps each process has moved its own copy only."""
        if not self.owns_halves:
            return
        tensors = list(volume.parameters())
        for p in list(tensors):
            state = optimizer.state.get(p, {})
            tensors += [m for m in state.values() if torch.is_tensor(m) and m.shape == p.shape]
        for half in (0, 1):
            parts = [t.detach()[half] for t in tensors]
            flat = torch.cat([t.reshape(-1) for t in parts])
            comm = flat.to(self.device) if self.device.type == "cuda" else flat.cpu()
            dist.broadcast(comm, src=half)
            start = 0
            with torch.no_grad():
                for t in parts:
                    t.copy_(comm[start : start + t.numel()].view_as(t).to(t.device))
                    start += t.numel()

    def sync_rows(self, tensors: Iterable[torch.Tensor], idx: np.ndarray) -> None:
        """Copy rows ``idx`` of each per-particle tensor from the process that computed them (last batch)."""
        if not self.active:
            return
        assert self._owner is not None
        self._gather(list(tensors), idx, self._owner)

    def sync_blocks(self, tensors: Iterable[torch.Tensor], n: int) -> None:
        """Copy every row from the process whose :meth:`block` holds it."""
        if not self.active:
            return
        tensors = list(tensors)
        owner = np.concatenate(
            [np.full(len(b), r) for r, b in enumerate(np.array_split(np.arange(n), self.world))]
        )
        for start in range(0, n, _SYNC_ROWS):
            rows = np.arange(start, min(n, start + _SYNC_ROWS))
            self._gather(tensors, rows, owner[rows])

    def _gather(self, tensors: list[torch.Tensor], idx: np.ndarray, owner: np.ndarray) -> None:
        """Rows ``idx`` of every tensor from their owners, by one all-reduce of a masked float64 buffer."""
        mine = torch.from_numpy(owner == self.rank)
        parts = []
        for t in tensors:
            rows = t.detach()[torch.as_tensor(idx, device=t.device)].cpu().to(torch.float64)
            parts.append(torch.where(mine.view(-1, *[1] * (rows.dim() - 1)), rows, 0.0).reshape(len(idx), -1))
        total = self._all_reduce(torch.cat(parts, 1))
        start = 0
        for t, part in zip(tensors, parts, strict=True):
            width = part.shape[1]
            rows = total[:, start : start + width].reshape(len(idx), *t.shape[1:]).to(t.dtype)
            with torch.no_grad():
                t[torch.as_tensor(idx, device=t.device)] = rows.to(t.device)
            start += width

    def main_first(self, on_main: Callable[[], Any], on_others: Callable[[], Any]) -> Any:
        """``on_main()`` in process 0, then ``on_others()`` elsewhere; process 0's error stops them all."""
        if not self.active:
            return on_main()
        error = None
        result = None
        if self.main:
            try:
                result = on_main()
            except Exception as exc:  # re-raised below, after the others have heard of it
                error = exc
        word = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(word, src=0)
        if error is not None:
            raise error
        if word[0] is not None:
            raise SystemExit(1)  # process 0 reports the error once
        return result if self.main else on_others()

    def share_batch_statistics(self, module: nn.Module) -> nn.Module:
        """``module`` with each BatchNorm2d normalising by the whole batch's statistics (all processes)."""
        if not self.active:
            return module
        for name, child in module.named_children():
            if type(child) is nn.BatchNorm2d:
                shared = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, dp=self)
                shared.load_state_dict(child.state_dict())
                setattr(module, name, shared.to(next(child.parameters()).device))
            else:
                self.share_batch_statistics(child)
        return module


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalisation of (B, C, H, W) by the statistics of the whole batch over all processes: one
    collective forward (the sums), one backward (the gradient's sums, weighted by each process's share of
    the batch), and the fused native kernel for the normalisation itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, dp: DataParallel, eps: float):
        c = x.shape[1]
        count = x.numel() // c
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        stats = dp._all_reduce(torch.cat([mean * count, (var + mean * mean) * count, x.new_tensor([count])]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.dp, ctx.n = dp, n
        ctx.mark_non_differentiable(mean, var, n)
        y = nn.functional.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)
        return y, mean, var, n

    @staticmethod
    def backward(ctx, dy, *_):
        x, weight, mean, invstd = ctx.saved_tensors
        c = x.shape[1]
        w = ctx.dp.grad_weight
        x_hat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
        sum_dy, sum_dy_xhat = dy.sum((0, 2, 3)), (dy * x_hat).sum((0, 2, 3))
        total = ctx.dp._all_reduce(torch.cat([sum_dy, sum_dy_xhat]) * w) / (w * ctx.n)
        scale = (weight * invstd)[None, :, None, None]
        dx = (dy - total[:c][None, :, None, None] - x_hat * total[c:][None, :, None, None]) * scale
        return dx, sum_dy_xhat, sum_dy, None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training mean and variance are those of the whole batch over all processes.

    ``torch.nn.SyncBatchNorm`` does this on GPUs only; this one runs on any device (gloo or NCCL) and keeps
    BatchNorm2d's state dict, so checkpoints move between process counts.
    """

    def __init__(self, num_features: int, eps: float, momentum: float | None, dp: DataParallel):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.dp = dp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, C, H, W) by the global batch statistics when training, else as BatchNorm2d."""
        if not self.training:
            return super().forward(x)
        y, mean, var, n = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.dp, self.eps)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * n / (n - 1).clamp_min(1))
        return y


def particle_state(model: Any, pose_opt: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The run model's per-particle tensors (n rows each): best poses, and in auto-decoding the pose
    parameters with their Adam moments (``pose_opt``). These are what :meth:`DataParallel.sync_rows`
    gathers."""
    tensors = [model.best_rot, model.best_shift, model.best_head]
    if model.poses is not None:
        tensors += [model.poses.base, model.poses.omega.weight, model.poses.shift.weight]
        for state in pose_opt.state.values():
            tensors += [m for m in state.values() if torch.is_tensor(m) and m.dim() == 2]
    return tensors


def from_env(device: torch.device) -> DataParallel:
    """The process group torchrun describes (``WORLD_SIZE`` > 1), joined once; else one process.

    On CUDA each process takes the GPU ``LOCAL_RANK`` and NCCL; on other devices gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DataParallel(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    dp = DataParallel(dist.get_rank(), dist.get_world_size(), device)
    dp.join_half_groups()
    return dp


def balanced_order(perm: np.ndarray, halves: np.ndarray) -> np.ndarray:
    """``perm`` with the two halves interleaved in proportion to their sizes (each half's order kept):
    every batch then holds both halves in the same ratio, so the processes that own one half each (in
    auto-decoding) get equal work at every step."""
    h = np.asarray(halves)[perm]
    first, second = perm[h == 0], perm[h == 1]
    key = np.concatenate([(np.arange(len(p)) + 0.5) / max(len(p), 1) for p in (first, second)])
    return np.concatenate([first, second])[np.argsort(key, kind="stable")]


def shutdown(together: bool = True) -> None:
    """Leave the process group (at the end of a torchrun process).

    ``together``: every process ended the run at the same step, so all first meet at a barrier. Without
    it a gloo worker thread can still be freeing the last collective's tensors when the interpreter exits,
    and the process aborts (SIGABRT) after a finished run. After an error in one process the others may
    never arrive, so it then leaves at once.
    """
    if not dist.is_initialized():
        return
    if together:
        dist.barrier()
    dist.destroy_process_group()
