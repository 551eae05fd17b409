"""Checkpoints written atomically (temp file + rename), so a crash never leaves a broken one."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(out_dir: Path, state: dict) -> Path:
    """Write ``state`` to ``out_dir/checkpoint.pt`` atomically; returns the path."""
    path = Path(out_dir) / CHECKPOINT_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(out_dir: Path) -> dict:
    """Read the checkpoint of a run folder, with a clear error when there is none."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no checkpoint to resume from. Fix: start a new run without --resume."
        )
    return torch.load(path, map_location="cpu", weights_only=False)
