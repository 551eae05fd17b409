"""``cryospin demo``: simulate a small dataset from the bundled map, reconstruct it, score it.

It is the README's main job, ending with the pose error and the FSC against the truth next to the
known-pose ceiling; its time is measured in docs/benchmarks.md (``DEMO_TIME``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_TIME = "41 min measured on 2 CPU cores shared with other jobs, load ~6; see docs/benchmarks.md"
"""How long the demo took, as measured (docs/benchmarks.md gives the machine, the load and the split)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("demo", help=f"simulate from the bundled map, reconstruct and score ({DEMO_TIME})")
    p.add_argument("--out", type=Path, default=Path("cryospin-demo"), help="output folder")
    p.add_argument("--n", type=int, default=2000, help="particles to simulate")
    # Box 64: at box 32 (6.62 Å/px, SNR 0.1) even the true map puts the best rotation 5.5° from the truth.
    p.add_argument("--box", type=int, default=64, choices=(32, 64), help="bundled map size")
    p.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio of the simulated images")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the engine's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, reconstruct, then print the comparison with the truth."""
    from ..data.mrc import read_volume
    from ..engine.config import RunConfig
    from ..engine.engine import Engine
    from ..resources import bundled_map_path
    from ..simulation.simulate import simulate_to_dir
    from . import evaluate
    from .reconstruct import consume
    from .stop_signals import StopSignals

    out: Path = args.out
    data = out / "data"
    volume, voxel = read_volume(bundled_map_path(args.box))
    if not (data / "particles.star").exists():
        print(f"simulating {args.n} particles (box {args.box}, SNR {args.snr:g}) into {data}")
        simulate_to_dir(volume, voxel, args.n, data, snr=args.snr, max_shift_px=args.box / 16, seed=args.seed)
    epochs = {} if args.epochs is None else {"epochs": args.epochs}
    cfg = RunConfig(
        particles=str(data / "particles.star"),
        out=str(out / "run"),
        device=args.device,
        seed=args.seed,
        overwrite=args.overwrite,
        **epochs,
    )
    print(f"reconstructing with cryoSPIN ({cfg.heads} heads, {cfg.epochs} epochs) into {cfg.out}")
    with StopSignals() as signals:
        print(consume(Engine(cfg, views=False), signals=signals))
    run_dir = Path(cfg.out)
    print("\ncryoSPIN against the truth:")
    evaluate.run(
        argparse.Namespace(
            truth=data / "truth.star",
            volume_truth=data / "truth_volume.mrc",
            poses=run_dir / "poses.star",
            volume=run_dir / "volume.mrc",
            json=run_dir / "evaluation.json",
        )
    )
    print(f"known-pose ceiling (true poses, same data): FSC 0.5 at {_ceiling(data):.2f} Å")
    return 0


def _ceiling(data: Path) -> float:
    """FSC-0.5 resolution against the truth of a backprojection with the true poses."""
    from ..data.mrc import read_volume
    from ..data.particles import load_particles
    from ..metrics.fsc import fsc, resolution_at
    from ..physics.reconstruction import backproject

    truth = load_particles(data / "truth.star")
    volume, voxel = read_volume(data / "truth_volume.mrc")
    est = backproject(truth, truth.rotations, truth.shifts)
    return resolution_at(*fsc(est, volume, voxel), 0.5)
