"""``cryospin backproject``: the map, half maps and half-map FSC of particles whose STAR file has poses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..metrics.fsc import fsc, resolution_at


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``backproject`` and its options."""
    parser = subparsers.add_parser(
        "backproject",
        help="reconstruct a map from particles with known poses",
        description="CTF-weighted direct Fourier inversion at the poses in PARTICLES (a RELION .star or "
        "cryoSPARC .cs with angles and origins); writes volume.mrc, half_a.mrc, half_b.mrc, fsc.png and "
        "fsc.json to --out.",
    )
    parser.add_argument("particles", type=Path, help="particle file with poses (.star or .cs)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--box", type=int, help="Fourier-crop the images to this box (pixels)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random half split")
    parser.add_argument(
        "--polarity",
        choices=("auto", "dark", "white"),
        default="auto",
        help="protein darker (dark) or brighter (white) than background; auto (default): from the data",
    )
    parser.set_defaults(run=run)
    return parser


def _plot_fsc(path: Path, freq, values, resolution: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(freq, values, label="half maps")
    ax.axhline(0.143, color="grey", linestyle="--", linewidth=0.8, label="0.143")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(f"FSC 0.143: {resolution:.2f} Å")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Reconstruct the full and half maps, write them with the FSC curve, print the 0.143 resolution."""
    from ..data.mrc import write_volume
    from ..data.particles import load_particles
    from ..polarity import choose_polarity
    from ..reconstruction import half_maps

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    particles = load_particles(args.particles, box=args.box)
    if particles.rotations is None or particles.shifts is None:
        raise ValueError(
            f"{args.particles.name}: has no poses (angles and origins). Fix: give a particle file from a "
            f"refinement, or run `cryospin reconstruct` to estimate poses ab initio."
        )
    if particles.ctf is None:
        raise ValueError(
            f"{args.particles.name}: has no CTF parameters. Fix: give a RELION .star or .cs file."
        )
    if len(particles) < 2:
        raise ValueError(
            f"{args.particles.name}: half maps need at least 2 particles, found {len(particles)}."
        )
    polarity = choose_polarity(particles, args.polarity, args.seed, args.device)
    particles.stack.sign = polarity.sign
    args.out.mkdir(parents=True, exist_ok=True)
    full, half_a, half_b = half_maps(
        particles,
        particles.rotations,
        particles.shifts,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    apix = particles.pixel_size
    for name, vol in (("volume.mrc", full), ("half_a.mrc", half_a), ("half_b.mrc", half_b)):
        write_volume(args.out / name, vol, apix)
    freq, values = fsc(half_a, half_b, apix)
    res_0143 = resolution_at(freq, values, 0.143)
    report = {
        "particles": str(args.particles),
        "n": len(particles),
        "box": int(particles.box),
        "pixel_size": apix,
        "seed": args.seed,
        "polarity": polarity.to_dict(),
        "resolution_0143": res_0143,
        "resolution_05": resolution_at(freq, values, 0.5),
        "freq": freq.tolist(),
        "fsc": values.tolist(),
    }
    (args.out / "fsc.json").write_text(json.dumps(report, indent=1))
    _plot_fsc(args.out / "fsc.png", freq, values, res_0143)
    print(f"{len(particles)} particles, box {particles.box}, {apix:.3f} Å/px -> {args.out}")
    print(f"polarity: {polarity.summary()}")
    print(f"half-map FSC 0.143: {res_0143:.2f} Å")
    return 0
