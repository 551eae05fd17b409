"""Ctrl-C and SIGTERM as a polite request: the engine stops at its next snapshot and saves a checkpoint.

Signal handlers only set a flag (a KeyboardInterrupt raised inside the engine's generator would close it
without a checkpoint); the consumer turns the flag into ``Command("stop")``. A second signal quits at once.
"""

from __future__ import annotations

import signal
import sys
import threading


class RunStopped(Exception):
    """A run ended early because of ``signum``; ``message`` says where its checkpoint is."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.message = message

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal (130, 143)."""
        return 128 + self.signum


class StopSignals:
    """Context manager catching SIGINT and SIGTERM; ``received`` holds the first signal's number."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stream=sys.stderr) -> None:
        self.received: int | None = None
        self._stream = stream
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame) -> None:
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        self._stream.write(
            f"\n{signal.Signals(signum).name}: stopping at the next step and saving a checkpoint "
            "(send it again to quit at once)\n"
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only live there
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()
