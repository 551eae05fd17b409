"""``cryospin reconstruct``: run the cryoSPIN engine headless with a progress bar."""

from __future__ import annotations

import argparse
import logging
import sys

from ..engine.config import RunConfig, config_defaults
from .stop_signals import RunStopped, StopSignals


def _switch(value: str) -> int | str | None:
    if value in ("auto", "manual", "none"):
        return None if value in ("manual", "none") else "auto"
    try:
        return int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("--switch takes an epoch number, 'auto' or 'manual'") from exc


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command; every default comes from RunConfig's fields."""
    d = config_defaults()
    p = sub.add_parser("reconstruct", help="ab-initio reconstruction of a particle stack")
    p.add_argument("particles", help="RELION .star or cryoSPARC .cs file")
    p.add_argument("--out", required=True, help="output folder (refused if it holds another run's results)")
    p.add_argument("--heads", type=int, default=d["heads"], help="encoder heads M (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="epochs in all (default %(default)s)")
    p.add_argument("--switch", type=_switch, default=d["switch"], help="epoch, 'auto' (default) or 'manual'")
    p.add_argument(
        "--explore-epochs",
        type=int,
        default=d["explore_epochs"],
        help="epochs of global pose search before auto-encoding (default %(default)s; 0 starts from a blob)",
    )
    p.add_argument(
        "--device", default=d["device"], help="auto (CUDA, else MPS, else CPU; default), cuda, mps or cpu"
    )
    p.add_argument(
        "--box",
        type=int,
        default=d["box"],
        help="work on the images Fourier-cropped to this box (even); default: the stack's box up to 64 on a "
        "CPU, 128 on a GPU. The final maps are always also made at the stack's box and pixel size",
    )
    p.add_argument("--encoder-box", type=int, default=d["encoder_box"], help="image size the encoder sees")
    p.add_argument(
        "--encoder-width", type=int, default=d["encoder_width"], help="channels of the first VGG block"
    )
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="default %(default)s")
    p.add_argument("--seed", type=int, default=d["seed"], help="default %(default)s")
    p.add_argument("--no-half-maps", action="store_true", help="skip writing half_a.mrc / half_b.mrc")
    p.add_argument(
        "--max-particles", type=int, default=d["max_particles"], help="use only the first N particles"
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint.pt")
    again.add_argument(
        "--overwrite", action="store_true", help="remove the results of a previous run in OUT, then start"
    )
    p.add_argument(
        "--polarity",
        choices=("auto", "dark", "white"),
        default=d["polarity"],
        help="protein darker (dark) or brighter (white) than background; auto (default): from the data",
    )
    p.add_argument(
        "--noise-model",
        choices=("auto", "white"),
        default=d["noise_model"],
        help="auto (default): weigh frequencies by the noise power measured per shell and optics group in "
        "the images' background; white: unweighted",
    )
    p.add_argument(
        "--junk",
        choices=("auto", "keep"),
        default=d["junk"],
        help="auto (default): leave particles scored as junk out of the final maps (all are scored in "
        "poses.star; the kept ones listed in particles_kept.star); keep: use every particle",
    )
    p.add_argument(
        "--explore-subset",
        type=int,
        default=d["explore_subset"],
        help="explore and auto-encode only N random particles (≥ 100), pose the others with the encoder and "
        "grid-search those it is unsure about; for large sets (default %(default)s: explore every particle)",
    )
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    """The RunConfig the arguments describe (it checks every value)."""
    return RunConfig(
        particles=args.particles,
        out=args.out,
        heads=args.heads,
        epochs=args.epochs,
        switch=args.switch,
        explore_epochs=args.explore_epochs,
        device=args.device,
        box=args.box,
        encoder_box=args.encoder_box,
        encoder_width=args.encoder_width,
        batch_size=args.batch_size,
        seed=args.seed,
        half_maps=not args.no_half_maps,
        resume=args.resume,
        overwrite=args.overwrite,
        max_particles=args.max_particles,
        polarity=args.polarity,
        noise_model=args.noise_model,
        junk=args.junk,
        explore_subset=args.explore_subset,
    )


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
    steps = logging.getLogger("napari_cryospin.engine.outputs")  # the final steps, a line each
    step_lines = _StepLines(stream) if engine.dp.main else logging.NullHandler()
    steps.addHandler(step_lines)
    steps.setLevel(logging.INFO)
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
        steps.removeHandler(step_lines)
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
