"""CPU throughput of the forward model's parts: slicing, the full image model with backward, backprojection.

Run as ``python bench/forward_model.py``; prints one table (finishes in well under two minutes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch

from napari_cryospin.geometry.rotations import random_rotations
from napari_cryospin.physics.ctf import ctf_2d
from napari_cryospin.physics.fourier import fftn_centered, frequency_grid_2d
from napari_cryospin.physics.reconstruction import accumulate
from napari_cryospin.physics.shifts import centering_phase
from napari_cryospin.physics.slicing import extract_slices

APIX = 3.0


def _rate(fn: Callable[[], object], items: int, min_time: float = 1.0) -> float:
    """Items per second of ``fn`` after one warm-up call, repeated for at least ``min_time`` seconds."""
    fn()
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return items * count / elapsed


def _ctf_params(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    du = 10000 + 20000 * torch.rand(n, generator=gen)
    return {
        "defocus_u": du,
        "defocus_v": du,
        "defocus_angle": torch.zeros(n),
        "voltage": torch.full((n,), 300.0),
        "cs": torch.full((n,), 2.7),
        "amplitude_contrast": torch.full((n,), 0.1),
    }


def bench_slices(box: int, images: int, heads: int) -> float:
    """Slices per second of :func:`extract_slices` on a real (Hartley) volume, rotations (images, heads)."""
    vol = torch.randn(box, box, box)
    rot = random_rotations(images * heads).reshape(images, heads, 3, 3)
    k = frequency_grid_2d(box).reshape(-1, 2)
    return _rate(lambda: extract_slices(vol, rot, k), images * heads)


def bench_forward(box: int, images: int) -> float:
    """Images per second of FFT(image), CTF, shift, slice and a squared-error loss with its backward."""
    vol = torch.randn(box, box, box, dtype=torch.complex64, requires_grad=True)
    rot = random_rotations(images).requires_grad_(True)
    shifts = torch.randn(images, 2).requires_grad_(True)
    data = torch.randn(images, box, box)
    k = frequency_grid_2d(box).reshape(-1, 2)
    params = _ctf_params(images)

    def step() -> None:
        observed = fftn_centered(data, 2).reshape(images, -1)
        ctf = ctf_2d(k / (box * APIX), **params)
        model = ctf * extract_slices(vol, rot, k) * centering_phase(k / box, shifts).conj()
        loss = (model - observed).abs().pow(2).mean()
        loss.backward()

    return _rate(step, images)


class _ArrayStack:
    """In-memory stand-in for ``ParticleStack``: ``box``, ``len`` and ``stack[idx]``."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.box = data.shape[-1]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.data[idx]


def bench_backprojection(box: int, images: int) -> float:
    """Images per second of :func:`reconstruction.accumulate` (CTF-weighted trilinear insertion)."""
    ctf = SimpleNamespace(**{key: v.numpy() for key, v in _ctf_params(images).items()})
    data = np.random.default_rng(0).standard_normal((images, box, box)).astype(np.float32)
    particles = SimpleNamespace(stack=_ArrayStack(data), ctf=ctf, pixel_size=APIX)
    rot = random_rotations(images).numpy()
    shifts = np.zeros((images, 2))
    return _rate(lambda: accumulate(particles, rot, shifts, batch_size=images), images)


def main() -> None:
    """Print the throughput table."""
    torch.manual_seed(0)
    rows = []
    for box in (64, 128):
        for images, heads in ((64, 1), (64, 8), (256, 8)):
            what = f"extract_slices, images × heads = {images} × {heads}"
            rows.append((what, box, bench_slices(box, images, heads), "slices/s"))
    for box in (64, 128):
        rows.append(("forward model + loss + backward, batch 64", box, bench_forward(box, 64), "images/s"))
    for box in (64, 128):
        rows.append(
            ("backprojection (accumulate), batch 256", box, bench_backprojection(box, 256), "images/s")
        )
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    print(f"{'what':<52} {'box':>4} {'rate':>10}  unit")
    for what, box, rate, unit in rows:
        print(f"{what:<52} {box:>4} {rate:>10.0f}  {unit}")


if __name__ == "__main__":
    main()
