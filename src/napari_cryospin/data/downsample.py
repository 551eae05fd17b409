"""Fourier cropping and `ParticleStack`, which serves (optionally downsampled) images from MRC stacks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import ParticleFileError
from .mrc import MrcStack, open_stack


def fourier_crop(images: np.ndarray, new_box: int) -> np.ndarray:
    """Downsample (k, L, L) images to (k, new_box, new_box) by keeping the centred low frequencies.

    Pixel values keep their scale: the mean is preserved, so a constant image stays that constant.
    """
    images = np.asarray(images)
    box = images.shape[-1]
    if new_box == box:
        return images.astype(np.float32, copy=True)
    if not 0 < new_box < box or new_box % 2:
        raise ValueError(f"new_box must be even and between 2 and {box}, got {new_box}")
    axes = (-2, -1)
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=axes)), axes=axes)
    start = box // 2 - new_box // 2
    crop = spectrum[..., start : start + new_box, start : start + new_box]
    small = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(crop, axes=axes)), axes=axes).real
    return (small * (new_box / box) ** 2).astype(np.float32)


class ParticleStack:
    """Particle images referenced as (stack file, image index), served as float32 (k, box, box).

    Stacks are opened once (memory-mapped) and cached per file; `box` smaller than the stored box
    Fourier-crops on the fly. Images of an odd box L (``stored_box``) are served at the even
    ``original_box`` L − 1 by dropping their last row and column: the centre (index L // 2) and the pixel
    size stay, and the engine's Fourier grids need an even box (RELION's too). `source` is the metadata
    file named in error messages. Served images are multiplied by `sign` (−1 turns protein-white images
    into the project's dark-protein convention; see `diagnostics/polarity.py`), so every reader of the stack
    sees one polarity.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        file_index: np.ndarray,
        image_index: np.ndarray,
        box: int | None = None,
        check_finite: bool = True,
        source: str | os.PathLike | None = None,
        sign: float = 1.0,
        _cache: dict[Path, MrcStack] | None = None,
    ):
        self.files = [Path(f) for f in files]
        self.file_index = np.asarray(file_index, dtype=np.int64)
        self.image_index = np.asarray(image_index, dtype=np.int64)
        self.source = Path(source) if source is not None else None
        self.check_finite = check_finite
        self.sign = float(sign)
        self._stacks = {} if _cache is None else _cache
        if self.file_index.shape != self.image_index.shape or self.file_index.ndim != 1:
            raise ValueError("file_index and image_index must be 1D arrays of the same length")
        if len(self.file_index) == 0:
            raise ParticleFileError(
                f"{self._source_name}: no particles. Fix: choose a file that lists particles."
            )
        self.stored_box = self._validate()
        self.original_box = self.stored_box - self.stored_box % 2
        self.box = self.original_box if box is None else int(box)
        if self.box > self.original_box or self.box < 2 or self.box % 2:
            odd = f" (odd, so served at {self.original_box})" if self.stored_box % 2 else ""
            raise ParticleFileError(
                f"{self._source_name}: cannot serve images at box {self.box}: the images are "
                f"{self.stored_box} pixels{odd}. Fix: choose an even box between 2 and {self.original_box}."
            )

    @property
    def _source_name(self) -> str:
        return self.source.name if self.source is not None else self.files[0].name

    def stack(self, file_number: int) -> MrcStack:
        """The open stack for `self.files[file_number]` (opened on first use, then cached)."""
        path = self.files[file_number]
        if path not in self._stacks:
            self._stacks[path] = open_stack(path)
        return self._stacks[path]

    def _validate(self) -> int:
        boxes: dict[int, Path] = {}
        for number in np.unique(self.file_index):
            stack = self.stack(int(number))
            boxes.setdefault(stack.box, stack.path)
            rows = np.flatnonzero(self.file_index == number)
            images = self.image_index[rows]
            bad = np.flatnonzero((images < 0) | (images >= len(stack)))
            if bad.size:
                row = int(rows[bad[0]])
                raise ParticleFileError(
                    f"{self._source_name}: row {row + 1} points to image {self.image_index[row] + 1} "
                    f"of {stack.path.name}, which holds {len(stack)} images. Fix: check that "
                    f"{self._source_name} belongs to this stack."
                )
        if len(boxes) > 1:
            (box_a, file_a), (box_b, file_b) = list(boxes.items())[:2]
            raise ParticleFileError(
                f"{self._source_name}: mixed box sizes: {file_a.name} has {box_a}-pixel images, "
                f"{file_b.name} has {box_b}. Fix: re-extract all particles with one box size."
            )
        return next(iter(boxes))

    def __len__(self) -> int:
        return len(self.file_index)

    def subset(self, indices: np.ndarray | Sequence[int] | slice) -> ParticleStack:
        """A stack serving only the chosen particles (sharing this one's open files and sign)."""
        pick = np.arange(len(self))[indices]
        return ParticleStack(
            self.files,
            self.file_index[pick],
            self.image_index[pick],
            box=self.box,
            check_finite=self.check_finite,
            source=self.source,
            sign=self.sign,
            _cache=self._stacks,
        )

    def resized(self, box: int) -> ParticleStack:
        """The same particles served at another (even, not larger than stored) `box`."""
        return ParticleStack(
            self.files,
            self.file_index,
            self.image_index,
            box=box,
            check_finite=self.check_finite,
            source=self.source,
            sign=self.sign,
            _cache=self._stacks,
        )

    def __getitem__(self, indices: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        pick = np.atleast_1d(np.arange(len(self))[indices])
        out = np.empty((len(pick), self.stored_box, self.stored_box), dtype=np.float32)
        files = self.file_index[pick]
        for number in np.unique(files):
            where = np.flatnonzero(files == number)
            images = self.image_index[pick[where]]
            order = np.argsort(images, kind="stable")
            out[where[order]] = self.stack(int(number))[images[order]]
        if self.check_finite:
            self._check_finite(out, pick)
        if self.sign != 1.0:
            out *= np.float32(self.sign)
        if self.stored_box != self.original_box:  # odd: drop the last row and column, centre kept
            out = out[:, : self.original_box, : self.original_box]
        return fourier_crop(out, self.box) if self.box != self.original_box else np.ascontiguousarray(out)

    def _check_finite(self, images: np.ndarray, pick: np.ndarray) -> None:
        finite = np.isfinite(images).all(axis=(1, 2))
        if finite.all():
            return
        particle = int(pick[np.flatnonzero(~finite)[0]])
        path = self.files[self.file_index[particle]]
        raise ParticleFileError(
            f"{path.name}: image {self.image_index[particle] + 1} (particle {particle + 1} of "
            f"{self._source_name}) contains NaN or infinite values. Fix: remove this particle or "
            f"re-extract the stack."
        )
