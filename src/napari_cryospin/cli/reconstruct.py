"""``cryospin reconstruct``: run the cryoSPIN engine headless with a progress bar."""

from __future__ import annotations

import argparse
import sys


def _switch(value: str) -> int | str | None:
    if value in ("auto", "manual", "none"):
        return None if value in ("manual", "none") else "auto"
    try:
        return int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("--switch takes an epoch number, 'auto' or 'manual'") from exc


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("reconstruct", help="ab-initio reconstruction of a particle stack")
    p.add_argument("particles", help="RELION .star or cryoSPARC .cs file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--heads", type=int, default=7, help="encoder heads M (default 7)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--switch", type=_switch, default="auto", help="epoch, 'auto' (default) or 'manual'")
    p.add_argument(
        "--explore-epochs",
        type=int,
        default=8,
        help="epochs of global pose search before auto-encoding (default 8; 0 starts from a blob)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cuda, mps or cpu")
    p.add_argument("--box", type=int, default=None, help="Fourier-crop the images to this box")
    p.add_argument("--encoder-box", type=int, default=None, help="image size the encoder sees")
    p.add_argument("--encoder-width", type=int, default=None, help="channels of the first VGG block")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-half-maps", action="store_true", help="skip writing half_a.mrc / half_b.mrc")
    p.add_argument("--max-particles", type=int, default=None, help="use only the first N particles")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--polarity",
        choices=("auto", "dark", "white"),
        default="auto",
        help="protein darker (dark) or brighter (white) than background; auto (default): from the data",
    )
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    """The RunConfig the arguments describe (defaults where an option was not given)."""
    from ..engine.config import RunConfig

    cfg = RunConfig(
        particles=args.particles,
        out=args.out,
        heads=args.heads,
        epochs=args.epochs,
        switch=args.switch,
        explore_epochs=args.explore_epochs,
        device=args.device,
        box=args.box,
        batch_size=args.batch_size,
        seed=args.seed,
        half_maps=not args.no_half_maps,
        resume=args.resume,
        max_particles=args.max_particles,
        polarity=args.polarity,
    )
    if args.encoder_box is not None:
        cfg.encoder_box = args.encoder_box
    if args.encoder_width is not None:
        cfg.encoder_width = args.encoder_width
    return cfg


def consume(engine, stream=sys.stderr) -> str:
    """Drive an engine to the end with a tqdm bar; Ctrl-C stops it cleanly (checkpoint saved)."""
    from tqdm import tqdm

    from ..engine.events import Command, Stage

    gen = engine.run()
    bar = tqdm(total=1000, file=stream, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
    snap = next(gen)
    try:
        while snap.stage != Stage.DONE:
            bar.n = int(1000 * snap.progress)
            bar.set_postfix_str(snap.message, refresh=True)
            try:
                snap = gen.send(None)
            except KeyboardInterrupt:
                snap = gen.send(Command("stop"))
    finally:
        bar.close()
    return snap.message


def run(args: argparse.Namespace) -> int:
    """Run the engine and print where the results are."""
    from ..engine.engine import Engine

    message = consume(Engine(config_from_args(args)))
    print(message)
    return 0
