"""Per-viewer meeting point of the cryoSPIN docks: the running dock publishes, the others listen and ask."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from qtpy.QtCore import QObject, Signal

from ..engine.events import Command, Snapshot

_HUBS: dict[int, RunHub] = {}


class RunHub(QObject):
    """Relays snapshots from the reconstruction dock and commands (particle choice) back to it."""

    snapshot = Signal(object)
    running = Signal(bool)
    chosen = Signal(int)  # the particle asked for (the posterior dock follows it)

    def __init__(self) -> None:
        super().__init__()
        self.last: Snapshot | None = None
        self.particle = 0
        self._sender: Callable[[Command], None] | None = None

    def publish(self, snapshot: Snapshot) -> None:
        """Hand a (coalesced) snapshot to every listener."""
        self.last = snapshot
        self.snapshot.emit(snapshot)

    def attach(self, sender: Callable[[Command], None] | None) -> None:
        """Route commands to a running engine (None when no run is active)."""
        self._sender = sender
        self.running.emit(sender is not None)

    @property
    def is_running(self) -> bool:
        """Whether a run is attached."""
        return self._sender is not None

    def select_particle(self, index: int) -> None:
        """Ask the run to report particle `index` from now on."""
        self.particle = int(index)
        self.chosen.emit(self.particle)
        if self._sender is not None:
            self._sender(Command("particle", self.particle))


def hub_for(viewer: object) -> RunHub:
    """The hub shared by all cryoSPIN docks of `viewer` (created on first use; proxies are unwrapped)."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    if key not in _HUBS:
        _HUBS[key] = RunHub()
        weakref.finalize(viewer, _HUBS.pop, key, None)
    return _HUBS[key]
