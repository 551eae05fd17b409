"""``cryospin reconstruct``: run the cryoSPIN engine headless with a progress bar."""

from __future__ import annotations

import argparse
import logging
import sys

from .run_flags import add_run_flags, config_from_args
from .stop_signals import RunStopped, StopSignals


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command; its flags, help and defaults come from RunConfig's declared settings."""
    p = sub.add_parser("reconstruct", help="ab-initio reconstruction of a particle stack")
    add_run_flags(p)
    p.set_defaults(run=run)


FINAL_STEPS = (
    "napari_cryospin.engine.outputs",
    "napari_cryospin.engine.local_refine",
    "napari_cryospin.engine.doubtful_poses",
)
"""The loggers whose lines the CLI prints above the bar: the final steps, the local refinement's rounds and
the passes of the search of the particles in doubt."""


class _StepLines(logging.Handler):
    """Prints each final step the engine logs ("writing full-size maps…") as a line above the bar."""

    def __init__(self, stream) -> None:
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(record.getMessage(), file=self.stream)


def consume(engine, stream=sys.stderr, signals: StopSignals | None = None) -> str:
    """Drive an engine to the end with a tqdm bar and return its last message.

    When ``signals`` caught SIGINT/SIGTERM, the engine is told to stop at its next snapshot (it saves a
    checkpoint) and :class:`RunStopped` is raised with the engine's message.
    """
    from tqdm import tqdm

    from ..engine.checkpoint import CHECKPOINT_NAME
    from ..engine.events import Command, Stage
    from ..engine.run_folder import RUN_RECORD

    if signals is not None:  # also heard inside the long stretches between snapshots
        engine.poll = lambda: Command("stop") if signals.received is not None else None
    step_lines = _StepLines(stream) if engine.dp.main else logging.NullHandler()
    for name in FINAL_STEPS:
        logging.getLogger(name).addHandler(step_lines)
        logging.getLogger(name).setLevel(logging.INFO)
    gen = engine.run()
    bar = tqdm(
        total=1000,
        file=stream,
        bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
        disable=not engine.dp.main,  # under torchrun, process 0 alone reports
    )
    stop_sent = False
    try:
        snap = next(gen)
        while snap.stage != Stage.DONE:
            bar.n = int(1000 * snap.progress)
            bar.set_postfix_str(snap.message, refresh=True)
            command = None
            if signals is not None and signals.received is not None and not stop_sent:
                command, stop_sent = Command("stop"), True
            snap = gen.send(command)
    finally:
        bar.close()
        gen.close()
        for name in FINAL_STEPS:
            logging.getLogger(name).removeHandler(step_lines)
    stopped = signals is not None and signals.received is not None  # sent here, or heard through poll
    if stopped and not (engine.out / RUN_RECORD).exists():  # not stopped if it finished meanwhile
        where = engine.out / CHECKPOINT_NAME
        raise RunStopped(signals.received, f"{snap.message} ({where}); continue it with --resume")
    return snap.message


def run(args: argparse.Namespace) -> int:
    """Run the engine and print where the results are; SIGINT/SIGTERM stop it with a checkpoint.

    Started by ``torchrun --nproc-per-node K``, K processes share the run (engine/distributed.py).
    """
    from ..engine.distributed import shutdown
    from ..engine.engine import Engine

    together = False  # did every process end at the same step (a finished or an agreed stop)?
    try:
        with StopSignals() as signals:
            engine = Engine(config_from_args(args), views=False)
            if signals.received is not None:
                raise RunStopped(signals.received, "stopped before training began; nothing was saved")
            try:
                message = consume(engine, signals=signals)
            except RunStopped:
                together = True  # the engine agrees a stop across processes
                raise
            together = True
    finally:
        shutdown(together)
    if engine.dp.main:
        print(message)
    return 0
