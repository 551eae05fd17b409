"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` and checked before a resume.

A checkpoint holds only tensors and plain values (numpy arrays travel as tensors, the engine's small
dataclasses as tagged dicts), so loading one never runs code from the file. It records the run's settings
and the input's identity; :func:`check_resumable` refuses a resume whose settings or input differ.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.safe_write import open_replacing
from ..physics.reconstruction import Accumulator
from .config import config_defaults
from .folder_lock import FolderLock
from .run_folder import begin_resume, claim_output

CHECKPOINT_NAME = "checkpoint.pt"

RESUME_SETTINGS = (
    "heads",
    "epochs",
    "switch",
    "explore_epochs",
    "box",
    "encoder_box",
    "encoder_width",
    "batch_size",
    "seed",
    "max_particles",
    "explore_subset",
)
"""Settings a resumed run must share with its checkpoint (the others, e.g. the device, may change)."""

REQUIRED_KEYS = ("config", "input", "stage", "epoch", "pos", "volume", "encoder")

_NUMPY, _DATACLASS = "__numpy__", "__dataclass__"
_DATACLASSES = {cls.__name__: cls for cls in (Accumulator,)}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, the problem and the fix."""


def _encode(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors, numpy scalars as Python ones and known dataclasses as dicts."""
    if isinstance(obj, np.ndarray):
        return {_NUMPY: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if _DATACLASSES.get(name) is not type(obj):
            raise TypeError(f"checkpoint cannot hold a {name}; add it to checkpoint._DATACLASSES")
        values = {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {_DATACLASS: name, "fields": values}
    if isinstance(obj, dict):
        return {key: _encode(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_encode(value) for value in obj)
    return obj


def _decode(obj: Any) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, dict):
        if _NUMPY in obj:
            return obj[_NUMPY].numpy()
        if _DATACLASS in obj:
            return _DATACLASSES[obj[_DATACLASS]](**{k: _decode(v) for k, v in obj["fields"].items()})
        return {key: _decode(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode(value) for value in obj)
    return obj


def save_checkpoint(out_dir: Path, state: dict) -> Path:
    """Write ``state`` to ``out_dir/checkpoint.pt`` atomically; returns the path. Written through a Python
    file object, so a full disk is the OSError naming the file (torch's own writer hides it)."""
    path = Path(out_dir) / CHECKPOINT_NAME
    encoded = _encode(state)
    with open_replacing(path) as fh:
        torch.save(encoded, fh)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _refused_global(exc: BaseException) -> str:
    """The function or class a refused pickle asked for (``posix.system``), as torch's message names it."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f" ({found[1]})" if found else ""


def load_checkpoint(out_dir: Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """Read the checkpoint of a run folder (tensors and plain values only); one clear line when it cannot.

    ``required``: the keys it must hold (a resume needs all; browsing a run needs fewer)."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no checkpoint to resume from. Fix: start a new run without --resume."
        )
    fix = "Fix: start the run again with --overwrite, or restore a good checkpoint.pt."
    with open(path, "rb") as fh:  # failing to open it is an OS error; failing to parse it is the file's
        try:
            with warnings.catch_warnings():  # torch's advice on pickle protocols is not for our users
                warnings.simplefilter("ignore")
                raw = torch.load(fh, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # torch's text advises weights_only=False: never repeat it
            named = _refused_global(exc)
            held = (
                f"it holds objects other than tensors and plain values{named}"
                if named
                else ("its bytes are no tensors and plain values the safe reader can parse")
            )
            raise CheckpointError(
                f"{path}: not a checkpoint this program wrote, or a damaged one: {held}, so it was refused "
                "for safety (nothing in it was run). Fix: start the run again with --overwrite, or choose a "
                "new --out."
            ) from None
        except Exception as exc:  # a data file must never crash us: every parse failure is the file's
            raise CheckpointError(f"{path}: damaged or not a checkpoint ({_first_line(exc)}). {fix}") from exc
    missing = [key for key in required if not isinstance(raw, dict) or key not in raw]
    if missing:
        raise CheckpointError(
            f"{path}: not a cryospin checkpoint of this version (missing {', '.join(missing)}). {fix}"
        )
    try:
        return _decode(raw)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged ({_first_line(exc)}). {fix}") from exc


def _shown(name: str, value: object) -> str:
    if name == "switch" and value is None:
        return "manual"
    return "unset" if value is None else str(value)


def _resume_fix(saved: dict, names: list[str]) -> str:
    """How to ask for the checkpoint's values of ``names``: ``with --heads 3 and without --box``."""
    flags = {name: f"--{name.replace('_', '-')}" for name in names}
    unset = [flags[n] for n in names if saved.get(n) is None and n != "switch"]
    given = [f"{flags[n]} {_shown(n, saved.get(n))}" for n in names if flags[n] not in unset]
    parts = [f"with {' '.join(given)}"] * bool(given) + [f"without {' '.join(unset)}"] * bool(unset)
    return "resume " + " and ".join(parts)


def check_resumable(path: Path, state: dict, config: Any, identity: dict) -> None:
    """Raise CheckpointError naming every setting or input property that differs from the checkpoint."""
    # A setting added after the checkpoint was written had its default then.
    saved = {**{k: v for k, v in config_defaults().items() if k in RESUME_SETTINGS}, **state["config"]}
    now = config.to_dict()
    changed = [name for name in RESUME_SETTINGS if now[name] != saved.get(name)]
    differ = [
        f"--{name.replace('_', '-')} {_shown(name, now[name])} (checkpoint: {_shown(name, saved.get(name))})"
        for name in changed
    ]
    was = state["input"]
    if not {"box", "max_particles"} & set(changed):  # those settings already explain other images
        for key, what in (("count", "particle count"), ("box", "box"), ("fingerprint", "images")):
            if identity[key] != was.get(key):
                differ.append(f"{what} {identity[key]} (checkpoint: {was.get(key)}, from {was.get('path')})")
    if differ:
        fix = _resume_fix(saved, changed) if changed else f"resume with the particles of {was.get('path')}"
        raise CheckpointError(
            f"{path}: cannot resume, the run differs from its checkpoint: {'; '.join(differ)}. "
            f"Fix: {fix}, or start a new run with --overwrite or another --out."
        )


def open_run_folder(config: Any, identity: dict) -> tuple[FolderLock, dict | None]:
    """Lock and ready ``config.out`` for the run before any work: the folder's lock (release it when the
    run ends) and, when resuming, the checked checkpoint state.

    Refuses a folder another run is using, another run's folder (unless ``overwrite``), an unreadable
    checkpoint, and a resume whose settings or input differ from its checkpoint.
    """
    out = Path(config.out)
    lock = claim_output(out, resume=config.resume, overwrite=config.overwrite)
    try:
        state = read_resume_state(config, identity)
        if state is not None:
            begin_resume(out)
    except BaseException:
        lock.release()
        raise
    return lock, state


def read_resume_state(config: Any, identity: dict) -> dict | None:
    """The checked checkpoint state when ``config.resume``, else None; only reads (for other processes)."""
    if not config.resume:
        return None
    out = Path(config.out)
    state = load_checkpoint(out)
    check_resumable(out / CHECKPOINT_NAME, state, config, identity)
    return state
