"""A read-on-demand (n, L, L) array view of a `ParticleStack`, for napari Image layers."""

from __future__ import annotations

import numpy as np

from ..data.downsample import ParticleStack


class LazyStack:
    """Array-like over a particle stack: indexing reads only the images it needs (float32)."""

    def __init__(self, stack: ParticleStack):
        self._stack = stack
        self.shape = (len(stack), stack.box, stack.box)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self.size = int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if first is Ellipsis:
            first, rest = slice(None), (Ellipsis, *rest)
        if isinstance(first, (int, np.integer)):
            return self._stack[int(first)][0][rest]
        return self._stack[np.arange(len(self))[first]][(slice(None), *rest)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)
