"""MRC volumes and memory-mapped MRC image stacks, with errors that say which file is wrong and why."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.utils import dtype_from_mode

from .errors import ParticleFileError
from .safe_write import replacing

_HEADER_BYTES = 1024


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise ParticleFileError(f"{path}: {what} not found. Fix: check the path and that the file exists.")
    if not path.is_file():
        raise ParticleFileError(f"{path}: is a folder, not an MRC file. Fix: choose the {what} itself.")


def _diagnose(path: Path, exc: Exception) -> ParticleFileError:
    """Explain why mrcfile refused `path`: truncated data, a header that is not MRC, or other damage."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES or head[208:211] != b"MAP":
        return ParticleFileError(
            f"{path.name}: not an MRC file (no 'MAP' tag in its {_HEADER_BYTES}-byte header; "
            f"file size {size} bytes). Fix: choose an .mrc/.mrcs file written by cryo-EM software."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.mmap(path, permissive=True) as mrc:
            hdr = mrc.header
            try:
                item = dtype_from_mode(hdr.mode).itemsize
            except ValueError:
                item = 0
            expected = _HEADER_BYTES + int(hdr.nsymbt) + int(hdr.nx) * int(hdr.ny) * int(hdr.nz) * item
            shape = (int(hdr.nz), int(hdr.ny), int(hdr.nx))
    if item and size < expected:
        return ParticleFileError(
            f"{path.name}: truncated: its header announces {shape[0]} images of {shape[2]}x{shape[1]} "
            f"pixels ({expected} bytes) but the file holds only {size} bytes. Fix: copy or extract "
            f"the stack again (an interrupted transfer or a full disk cuts files short)."
        )
    return ParticleFileError(
        f"{path.name}: damaged MRC file ({exc}). Fix: re-export it, or check it with "
        f"`python -m mrcfile.validator {path.name}`."
    )


def _open_mmap(path: Path, what: str) -> mrcfile.mrcmemmap.MrcMemmap:
    _require_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mrcfile.mmap(path, mode="r", permissive=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _diagnose(path, exc) from exc


def _header_pixel_size(mrc: mrcfile.mrcmemmap.MrcMemmap) -> float | None:
    """Pixel size along x from the header; 0 or 1 means the writer left it unset, so None."""
    size = float(mrc.voxel_size.x)
    if not np.isfinite(size) or size <= 0 or size == 1.0:
        return None
    return size


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a 3D map as float32 `V[z, y, x]` and its voxel size in Å (1.0 when the header has none)."""
    path = Path(path)
    with _open_mmap(path, "volume") as mrc:
        if mrc.data is None or mrc.data.ndim != 3:
            raise ParticleFileError(
                f"{path.name}: expected a 3D volume, found data of shape "
                f"{None if mrc.data is None else mrc.data.shape}. Fix: choose a 3D map (.mrc)."
            )
        volume = np.array(mrc.data, dtype=np.float32)
        voxel = float(mrc.voxel_size.x)
    return volume, voxel if voxel > 0 else 1.0


def write_volume(path: str | os.PathLike, volume: np.ndarray, voxel_size: float) -> None:
    """Write a float32 map with its voxel size in the header, atomically (temporary file, then rename)."""
    with replacing(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        mrc.voxel_size = float(voxel_size)
        mrc.update_header_stats()


class MrcStack:
    """A stack of square images; indexing returns float32 copies of shape (k, L, L).

    The file is memory-mapped for its shape and for viewers (``data``), but indexing reads the images with
    ``os.pread``: pages of a mapped file stay in the process's resident memory once touched, so an epoch
    over a mapped stack would grow the RSS to the stack's size; read pages are only the OS's file cache.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._mrc = _open_mmap(self.path, "particle stack")
        data = self._mrc.data
        if data is None or data.ndim not in (2, 3):
            self._mrc.close()
            raise ParticleFileError(
                f"{self.path.name}: holds no image data. Fix: choose a stack of 2D particle images."
            )
        self._data = data[np.newaxis] if data.ndim == 2 else data
        if self._data.shape[0] == 0:
            self._mrc.close()
            raise ParticleFileError(f"{self.path.name}: the stack is empty. Fix: choose a non-empty stack.")
        ny, nx = self._data.shape[1:]
        if ny != nx:
            self._mrc.close()
            raise ParticleFileError(
                f"{self.path.name}: images are {nx}x{ny} pixels, not square. Fix: re-extract the "
                f"particles with a square box."
            )
        self.pixel_size = _header_pixel_size(self._mrc)
        self._offset = int(data.offset) if isinstance(data, np.memmap) else None
        self._image_bytes = nx * ny * self._data.dtype.itemsize
        stream = getattr(self._mrc, "_iostream", None)  # mrcfile's open file: no second descriptor
        self._fd = stream.fileno() if hasattr(os, "pread") and self._offset and stream else None

    @property
    def data(self) -> np.memmap:
        """The memory-mapped (n, L, L) data as stored (not a copy, dtype of the file)."""
        return self._data

    @property
    def shape(self) -> tuple[int, int, int]:
        """(number of images, L, L)."""
        return tuple(int(s) for s in self._data.shape)

    @property
    def box(self) -> int:
        """Image side length in pixels."""
        return int(self._data.shape[-1])

    def __len__(self) -> int:
        return int(self._data.shape[0])

    def __getitem__(self, indices: int | slice | Iterable[int] | np.ndarray) -> np.ndarray:
        if isinstance(indices, slice):
            idx = np.arange(len(self))[indices]
        else:
            idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
            if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
                raise IndexError(f"{self.path.name}: index out of range for {len(self)} images")
            idx = np.where(idx < 0, idx + len(self), idx)
        if self._fd is None:
            return np.array(self._data[idx], dtype=np.float32)
        return self._read(idx).astype(np.float32, copy=False)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """Images ``idx`` (any order, repeats allowed), one ``pread`` per run of consecutive images."""
        box = self.box
        out = np.empty((len(idx), box, box), dtype=self._data.dtype)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        for run in np.split(np.arange(len(idx)), np.flatnonzero(np.diff(ordered) != 1) + 1):
            if not len(run):
                continue
            size = len(run) * self._image_bytes
            raw = os.pread(self._fd, size, self._offset + int(ordered[run[0]]) * self._image_bytes)
            if len(raw) != size:
                raise ParticleFileError(
                    f"{self.path.name}: ends inside image {int(ordered[run[-1]]) + 1}. Fix: copy or extract "
                    f"the stack again (an interrupted transfer or a full disk cuts files short)."
                )
            out[order[run]] = np.frombuffer(raw, self._data.dtype).reshape(len(run), box, box)
        return out

    def close(self) -> None:
        """Release the memory map (and its file)."""
        self._mrc.close()

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def open_stack(path: str | os.PathLike) -> MrcStack:
    """Open an MRC image stack (or a single 2D image, a stack of 1) without reading it into memory."""
    return MrcStack(path)
