"""The worker side of a run: the engine's snapshot stream, steerable from the GUI thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator
from dataclasses import replace

from napari.qt.threading import GeneratorWorker

from ..engine.config import RunConfig
from ..engine.error_funnel import explain
from ..engine.events import Command, Snapshot

log = logging.getLogger(__name__)

STOP_WAIT_S = 60.0
"""How long closing the dock or napari waits for the engine to save its stop checkpoint."""

_CARRIED = ("volume", "particle", "fsc", "head_fractions", "resolution")


def _next_command(commands: queue.SimpleQueue) -> Command | None:
    try:
        return commands.get_nowait()
    except queue.Empty:
        return None


def engine_stream(
    config: RunConfig, commands: queue.SimpleQueue, done: threading.Event | None = None
) -> Generator[Snapshot, Command | None, str | None]:
    """Yield the engine's snapshots, passing on commands from `worker.send()` or the `commands` queue.

    Returns None when the run ends, or the one-line message of whatever stopped it (bad input, disk,
    memory, torch; see ``error_funnel.explain``; the traceback goes to this module's debug log). Sets
    `done` when it finishes in any way, so the dock can wait for a clean stop.
    """
    run = None
    try:
        from ..engine.engine import Engine

        engine = Engine(config)
        engine.poll = lambda: _next_command(commands)  # a Stop is heard inside the halves' alignment too
        run = engine.run()
        snapshot = next(run)
        while True:
            sent = yield snapshot
            try:
                snapshot = run.send(sent if sent is not None else _next_command(commands))
            except StopIteration:
                return None
    except Exception as exc:
        log.debug("the cryoSPIN run failed", exc_info=True)
        return explain(exc)
    finally:
        if run is not None:
            run.close()
        if done is not None:
            done.set()


class EngineWorker(GeneratorWorker):
    """The worker of :func:`engine_stream`, whose ``quit`` is a clean stop.

    napari quits the workers it knows of when its window closes; a plain quit would abandon the engine
    between two steps without a checkpoint. This one asks the engine to stop (it saves a checkpoint) and
    waits up to ``STOP_WAIT_S`` for it before quitting.
    """

    def __init__(
        self, func, config: RunConfig, commands: queue.SimpleQueue, done: threading.Event, **kwargs
    ) -> None:
        super().__init__(func, config, commands, done, **kwargs)
        self._commands, self._done = commands, done

    def stop_and_wait(self, wait_s: float = STOP_WAIT_S) -> bool:
        """Ask the engine to stop and wait for its stream to end; True when it ended."""
        if self._done.is_set():
            return True
        self._commands.put(Command("stop"))
        if self._done.wait(wait_s):
            return True
        log.warning("the cryoSPIN run did not stop within %.0f s; it stops at its next step", wait_s)
        return False

    def quit(self) -> None:
        """Stop the engine cleanly when it runs, then end the worker."""
        if self._running:
            self.stop_and_wait()
        super().quit()


def merge_snapshots(older: Snapshot | None, newer: Snapshot) -> Snapshot:
    """`newer`, with the volume, particle view, FSC, head shares and resolution of `older` it lacks."""
    if older is None:
        return newer
    kept = {name: getattr(older, name) for name in _CARRIED if getattr(newer, name) is None}
    return replace(newer, **kept) if kept else newer
