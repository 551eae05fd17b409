"""The worker side of a run: the engine's snapshot stream, steerable from the GUI thread."""

from __future__ import annotations

import queue
from collections.abc import Generator
from dataclasses import replace

from ..engine.config import RunConfig
from ..engine.events import Command, Snapshot

_CARRIED = ("volume", "particle", "fsc", "head_fractions", "resolution")


def _next_command(commands: queue.SimpleQueue) -> Command | None:
    try:
        return commands.get_nowait()
    except queue.Empty:
        return None


def engine_stream(
    config: RunConfig, commands: queue.SimpleQueue
) -> Generator[Snapshot, Command | None, str | None]:
    """Yield the engine's snapshots, passing on commands from `worker.send()` or the `commands` queue.

    Returns the error message when the engine rejects the input before running (for the user, no traceback).
    """
    from ..engine.engine import Engine

    try:
        run = Engine(config).run()
        snapshot = next(run)
    except ValueError as exc:
        return str(exc)
    while True:
        sent = yield snapshot
        try:
            snapshot = run.send(sent if sent is not None else _next_command(commands))
        except StopIteration:
            return None


def merge_snapshots(older: Snapshot | None, newer: Snapshot) -> Snapshot:
    """`newer`, with the volume, particle view, FSC, head shares and resolution of `older` it lacks."""
    if older is None:
        return newer
    kept = {name: getattr(older, name) for name in _CARRIED if getattr(newer, name) is None}
    return replace(newer, **kept) if kept else newer
