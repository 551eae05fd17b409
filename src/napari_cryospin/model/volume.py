"""Explicit volume decoder: a voxel grid in Hartley space, ``H = mantissa · exp(exponent)`` (Sec. 4.3).

The exponent carries the steep radial fall-off of the spectrum so the mantissa stays O(1); slicing the
Hartley grid at a pose gives the Hartley transform of the projection directly (it is real and linear).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..geometry.symmetry import symmetrize_grid
from ..physics.fourier import hartley_centered, ihartley_centered
from ..physics.slicing import extract_slices

SLICE_TABLE_VALUES = 1 << 26
"""Largest table of a whole rotation grid's slices kept between grid searches (256 MiB of float32): at
box 64 the fine grid (4608 rotations) on the whole disk needs a quarter of it."""


class HartleyVolume(nn.Module):
    """A (D, D, D) Hartley-space density, or two independent ones (gold-standard halves)."""

    def __init__(
        self, box: int, exponent: torch.Tensor, copies: int = 1, operators: np.ndarray | None = None
    ) -> None:
        """``operators`` (n, 3, 3): a point group imposed on every grid read (``geometry/symmetry.py``)."""
        super().__init__()
        self.box = box
        self.operators = None if operators is None or len(operators) < 2 else np.asarray(operators)
        self._symmetric_cache: dict[int, tuple] = {}  # copy → (parameter versions, grid), without autograd
        self.mantissa = nn.Parameter(torch.zeros(copies, box, box, box))
        self.exponent = nn.Parameter(exponent.expand(copies, box, box, box).clone())
        self._frozen: dict[int, torch.Tensor] | None = None  # detached grids, inside ``frozen()`` only
        self._frozen_weight: torch.Tensor | None = None  # what ``frozen()`` multiplies them by
        self._frozen_mask: torch.Tensor | None = None  # the real-space mask ``frozen()`` applies first
        self._shared: tuple[torch.Tensor, ...] | None = None  # every copy's grid, inside ``shared()`` only
        self._slice_tables: dict[int, tuple] = {}  # copy → (key, params, grid, k2, slices): ``grid_slices``
        self._operators_set = 0  # bumped by ``impose``: reads change without a parameter write
        self._frozen_blocks = 0  # ``frozen()`` blocks entered so far: each reads its own filtered grids

    def impose(self, operators: np.ndarray | None) -> None:
        """Read every grid through point group ``operators`` (n, 3, 3) from now on (None or C1: none)."""
        self.operators = None if operators is None or len(operators) < 2 else np.asarray(operators)
        self._symmetric_cache = {}
        self._operators_set += 1

    @property
    def copies(self) -> int:
        """How many independent maps this decoder holds (1, or 2 for half maps)."""
        return self.mantissa.shape[0]

    def hartley(self, copy: int = 0) -> torch.Tensor:
        """The Hartley grid of one copy."""
        if self._shared is not None:
            return self._shared[copy]
        return self._symmetric(self.mantissa[copy] * torch.exp(self.exponent[copy]), copy)

    def _all_grids(self) -> torch.Tensor:
        """Every copy's Hartley grid (copies, D, D, D), from one product."""
        return self._symmetric(self.mantissa * torch.exp(self.exponent), -1)

    def _symmetric(self, grid: torch.Tensor, copy: int) -> torch.Tensor:
        """The grid averaged over the imposed point group (``H(g·k)`` of a symmetric map is ``H(k)``).

        Without autograd (grid searches read the map chunk by chunk) the result for ``copy`` (−1: all) is
        kept until the parameters change (their in-place version counters): once per map update."""
        if self.operators is None:
            return grid
        if torch.is_grad_enabled():
            return symmetrize_grid(grid, self.operators)
        params = (self.mantissa, self.exponent)
        key = tuple(p._version for p in params) + tuple(id(p) for p in params)
        cached = self._symmetric_cache.get(copy)
        if cached is None or cached[0] != key:
            cached = self._symmetric_cache[copy] = (key, symmetrize_grid(grid, self.operators))
        return cached[1]

    def slices(
        self, rotations: torch.Tensor, k2: torch.Tensor, copy: int = 0, detach: bool = False
    ) -> torch.Tensor:
        """Hartley coefficients (..., P) of the projections at ``rotations`` on frequencies ``k2``.

        ``detach`` keeps the gradient from reaching the map (it still reaches the rotations).
        """
        if self._frozen is not None and (detach or not torch.is_grad_enabled()):
            if copy not in self._frozen:
                with torch.no_grad():
                    grid = self.hartley(copy)
                    if self._frozen_mask is not None:
                        grid = hartley_centered(ihartley_centered(grid, 3) * self._frozen_mask, 3)
                    self._frozen[copy] = grid if self._frozen_weight is None else grid * self._frozen_weight
            return extract_slices(self._frozen[copy], rotations, k2)
        h = self.hartley(copy)
        return extract_slices(h.detach() if detach else h, rotations, k2)

    def grid_slices(self, grid: torch.Tensor, k2: torch.Tensor, copy: int = 0) -> torch.Tensor | None:
        """Slices (G, P) of every rotation of ``grid`` (G, 3, 3) on frequencies ``k2`` (P, 2), or None with
        autograd on or when the table would exceed SLICE_TABLE_VALUES.

        The table is kept (one per copy) until the map, the grid or the frequencies change: a search of
        many batches against one map (the global re-search, the final mate check) slices the grid once
        instead of once per batch, where slicing cost as much as scoring.
        """
        if torch.is_grad_enabled() or self._shared is not None or len(grid) * len(k2) > SLICE_TABLE_VALUES:
            return None
        params = (self.mantissa, self.exponent)  # kept with the table: compared by identity
        block = self._frozen_blocks if self._frozen is not None else None  # None: the unfiltered map
        key = (*(p._version for p in params), self._operators_set, block, k2._version)
        kept = self._slice_tables.get(copy)
        if (
            kept is not None
            and kept[0] == key
            and all(a is b for a, b in zip(kept[1], params, strict=True))
            and kept[2] is grid
            and _same_view(kept[3], k2)
        ):
            return kept[4]
        self._slice_tables[copy] = None  # free the old table before making the new one
        table = self.slices(grid, k2, copy)
        self._slice_tables[copy] = (key, params, grid, k2, table)
        return table

    @contextmanager
    def frozen(self, weight: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> Iterator[None]:
        """Within the block the map does not change: detached slices share one Hartley grid per copy
        (the pose steps between two map steps), instead of recomputing mantissa · exp(exponent) each time.

        ``mask`` (D, D, D, real space) and then ``weight`` (D, D, D, Hartley space, e.g. a radial filter)
        act on those detached grids only: the poses see the masked, filtered map while the map's own step
        still fits the whole, unfiltered one.
        """
        self._frozen, self._frozen_weight, self._frozen_mask = {}, weight, mask
        self._frozen_blocks += 1
        try:
            yield
        finally:
            self._frozen, self._frozen_weight, self._frozen_mask = None, None, None

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Within the block (one map step) every copy's grid comes from one product over all copies, split
        with ``unbind``: its backward stacks the copies' gradients, where indexing one copy's grid costs a
        zero-filled gradient of the whole parameter per copy and parameter (~5 ms a step at box 64)."""
        self._shared = self._all_grids().unbind(0)
        try:
            yield
        finally:
            self._shared = None

    def real_space(self, copy: int | None = None) -> torch.Tensor:
        """The real-space map of one copy, or the mean of all copies when ``copy`` is None."""
        with torch.no_grad():
            h = self.hartley(copy) if copy is not None else self._all_grids().mean(0)
            return ihartley_centered(h, 3)

    @torch.no_grad()
    def set_from_real_space(self, volume: torch.Tensor, copy: int | None = None) -> None:
        """Load a real-space map: the exponent keeps its radial profile, the mantissa takes the rest."""
        h = hartley_centered(volume.to(self.mantissa.device, torch.float32), 3)
        targets = range(self.copies) if copy is None else [copy]
        for c in targets:
            self.mantissa[c] = h / torch.exp(self.exponent[c])

    @torch.no_grad()
    def split(self) -> None:
        """Become two copies of the current map (the start of gold-standard half maps)."""
        if self.copies == 2:
            return
        self.mantissa = nn.Parameter(self.mantissa.detach().expand(2, -1, -1, -1).clone())
        self.exponent = nn.Parameter(self.exponent.detach().expand(2, -1, -1, -1).clone())


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors read the same memory the same way (a kept ``a`` keeps its memory from reuse)."""
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )
