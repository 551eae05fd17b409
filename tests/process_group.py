"""Tests that start gloo processes themselves (``torch.multiprocessing.spawn``): a free port, and the
environment torchrun would give each process."""

import os
import socket


def free_port() -> int:
    """A TCP port nobody listens on now, for the group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_as(rank: int, world: int, port: int) -> None:
    """Set torchrun's variables for process ``rank`` of ``world`` (the engine joins from them)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )  # fmt: skip
