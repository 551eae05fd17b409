"""One run per output folder: an exclusive lock on ``OUT/.cryospin.lock`` (the holder's pid and host inside).

The lock is ``fcntl.flock`` on the open file, so it lives exactly as long as the process holding it: a
killed run leaves no stale lock (its file is taken over by the next run). A run takes it before touching
anything in the folder and deletes the file when it lets go. Where there is no ``fcntl`` (Windows) or
the file system refuses locks, runs go on unlocked, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".cryospin.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_UNLOCKED = "%s: no file locks here; two runs in this folder at once would overwrite each other"


class FolderInUseError(ValueError):
    """Another run holds the folder's lock; the message names the folder and that run's pid and host."""


def _holder(fd: int) -> str:
    """'pid N on host H' as the lock's holder wrote it; '' while it has not written it yet."""
    words = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    return f"pid {words[0]} on host {words[1]}" if len(words) == 2 else ""


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a run letting go deletes its lock file)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class FolderLock:
    """The exclusive lock of one output folder, held from construction until :meth:`release`.

    Raises :class:`FolderInUseError` when another run (another process, or another run of this one)
    holds it. Also a context manager.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None
        if fcntl is None:
            log.warning(_UNLOCKED, folder)
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise FolderInUseError(
                    f"{self.path.parent}: another cryospin run is using this folder "
                    f"({holder or 'it is starting'}; lock file {LOCK_NAME}). Fix: wait for that run to end "
                    f"(or stop it), or choose another --out."
                ) from None
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise type(exc)(exc.errno, exc.strerror, str(self.path)) from exc
                log.warning(_UNLOCKED, folder)
            if _same_file(fd, self.path):  # else it was let go and deleted meanwhile: lock the new one
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Delete the lock file, then let go (so no one locks a deleted file); a second call does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(fd)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __del__(self) -> None:  # an engine dropped without finishing its run lets go of its folder
        self.release()
