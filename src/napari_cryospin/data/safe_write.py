"""Atomic file writes: each output goes to a hidden temporary file beside it, then ``os.replace``.

A crash, a full disk or Ctrl-C therefore leaves either the old file or the new one, never half of one,
and the temporary file is removed on any failure (``.NAME.PID.tmp``; see :func:`target_of`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files under ``folder`` whose writer process is gone (killed mid-write, e.g. by kill -9)."""
    stale = []
    for path in Path(folder).rglob(".*.tmp"):
        match = _TEMP.match(path.name)
        if match and not _alive(int(match["pid"])):
            stale.append(path)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary file a write of ``path`` goes through (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def target_of(path: str | os.PathLike) -> Path:
    """The file a temporary path of :func:`temp_path` stands for (``path`` itself when it is none)."""
    path = Path(path)
    match = _TEMP.match(path.name)
    return path.with_name(match["name"]) if match else path


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: name the one being written
            exc.filename = str(path)
        raise
    finally:
        with contextlib.suppress(OSError):  # never mask the error that brought us here
            tmp.unlink(missing_ok=True)


class _Remembering:
    """A binary file whose ``write`` remembers the OS error it raised: libraries that write through a file
    object (``torch.save``) turn that error into their own, which would hide a full disk."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


@contextlib.contextmanager
def open_replacing(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield an open binary file that atomically replaces ``path`` on success; a failed write surfaces as
    its OSError naming ``path`` (ENOSPC, EFBIG, …) even when the writing library reported another error."""
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        remembering = _Remembering(fh)
        try:
            yield remembering
        except Exception as exc:
            if remembering.error is not None and exc is not remembering.error:
                raise remembering.error from exc
            raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with open_replacing(path) as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON atomically (serialised first, so a bad value leaves no file behind)."""
    write_text(path, json.dumps(obj, indent=indent))


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez_compressed`` to ``path`` atomically."""
    import numpy as np

    with open_replacing(path) as fh:
        np.savez_compressed(fh, **arrays)


def save_figure(figure: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically; the format follows the suffix of ``path``."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    with open_replacing(path) as fh:
        figure.savefig(fh, format=fmt, **kwargs)
