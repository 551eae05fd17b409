"""One funnel for every failure the CLI and the napari dock show: one line with the cause and the fix.

The line keeps the original error's text (never masked); our own errors (ValueError subclasses such as
``ParticleFileError``) already name the file, the problem and the fix and are shown as they are.
"""

from __future__ import annotations

import errno

from ..data.safe_write import target_of

EXIT_BAD_INPUT = 2  # a setting or an input file the user can fix (a missing one too)
EXIT_FAILED = 1  # the machine: disk, permissions, memory, or a bug
EXIT_INTERRUPTED = 130

_DEBUG_FIX = "Fix: run again with --debug to see where it happened, and report it if it is a bug."
_MEMORY_FIX = "Fix: lower --batch-size or --box (or use --max-particles), or run with --device cpu."
_NO_ROOM = {  # errno: (what happened in plain words, the fix) for a write that found no room
    errno.ENOSPC: ("the disk is full", "free space or choose --out on another disk"),
    errno.EDQUOT: (
        "your disk quota is used up",
        "free space within your quota or choose --out on another disk",
    ),
    errno.EFBIG: (
        "the file passed a size limit: the shell's `ulimit -f` or the file system's largest file",
        "raise the limit (`ulimit -f unlimited`) or choose --out on another disk",
    ),
}


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _os_line(exc: OSError) -> str:
    if exc.errno is None:  # raised by our own code with a full sentence
        text = _first_line(str(exc))
        return text if "Fix:" in text else f"{text}. Fix: check the path."
    name = exc.filename if exc.filename is not None else "the output"
    where = str(target_of(name)) if isinstance(name, str) else str(name)
    cause = exc.strerror or _first_line(str(exc))
    code = exc.errno
    if code in _NO_ROOM:
        what, fix = _NO_ROOM[code]
        return f"{where}: {cause} ({what}). Fix: {fix}; files already there were left as they were."
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{where}: {cause}. Fix: choose a folder you can write to (--out), or change its permissions."
    if code == errno.ENOENT:
        return f"{where}: {cause}. Fix: check the path."
    if code in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return f"{where}: {cause}. Fix: --out must be a folder and input paths must be files; check both."
    kind = f"{type(exc).__name__}, errno {code}"
    return f"{where}: {cause} ({kind}). Fix: check the path, the disk and the permissions."


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def explain(exc: BaseException) -> str:
    """The one line shown for ``exc``: its cause (the original message) and what to do about it."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; the last checkpoint (end of the last full epoch) is kept."
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _is_out_of_memory(exc)):
        cause = _first_line(str(exc)) or "MemoryError"
        return f"out of memory ({cause}). {_MEMORY_FIX}"
    if isinstance(exc, OSError):
        return _os_line(exc)
    text = _first_line(str(exc))
    if isinstance(exc, ValueError) and "Fix:" in text:
        return text
    if isinstance(exc, RuntimeError):
        return f"torch failed: {text or type(exc).__name__}. {_DEBUG_FIX}"
    return f"{type(exc).__name__}: {text}. {_DEBUG_FIX}" if text else f"{type(exc).__name__}. {_DEBUG_FIX}"


def exit_status(exc: BaseException) -> int:
    """The exit status for ``exc``: 2 for bad settings or input, 130 for Ctrl-C, else 1."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILED
