"""``cryospin backproject``: the map, half maps and half-map FSC of particles whose STAR file has poses."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.safe_write import save_figure, write_json
from ..engine.config import DEVICES, check_box, check_device, check_int
from ..metrics.fsc import fsc, resolution_at


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``backproject`` and its options."""
    parser = subparsers.add_parser(
        "backproject",
        help="reconstruct a map from particles with known poses",
        description="CTF-weighted direct Fourier inversion at the poses in PARTICLES (a RELION .star or "
        "cryoSPARC .cs with angles and origins); writes volume.mrc, half_a.mrc, half_b.mrc, fsc.png, "
        "fsc.json and, last, run.json to --out.",
    )
    parser.add_argument("particles", type=Path, help="particle file with poses (.star or .cs)")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (refused if it holds another run's results)"
    )
    parser.add_argument("--box", type=int, help="Fourier-crop the images to this box (pixels, even)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICES)} (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random half split")
    parser.add_argument(
        "--polarity",
        choices=("auto", "dark", "white"),
        default="auto",
        help="protein darker (dark) or brighter (white) than background; auto (default): from the data",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="remove the results of a previous run in OUT first"
    )
    parser.add_argument(
        "--symmetry", default="C1", help="point group imposed on the maps (C1, Cn, Dn, T, O, I; RELION's)"
    )
    parser.set_defaults(run=run)
    return parser


def _plot_fsc(path: Path, freq, values, resolution: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(freq, values, label="half maps")
    ax.axhline(0.143, color="grey", linestyle="--", linewidth=0.8, label="0.143")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(f"FSC 0.143: {resolution:.2f} Å")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def run(args: argparse.Namespace) -> int:
    """Reconstruct the full and half maps, write them with the FSC curve, print the 0.143 resolution."""
    from ..data.mrc import write_volume
    from ..data.particles import load_particles
    from ..diagnostics.polarity import choose_polarity
    from ..engine.device import resolve_device
    from ..engine.inputs import input_identity
    from ..engine.run_folder import claim_output, write_run_record
    from ..geometry.symmetry import group_operators
    from ..physics.reconstruction import half_maps

    check_int("batch_size", args.batch_size, 1)
    check_int("seed", args.seed, 0)
    check_box("box", args.box, 2)
    check_device(args.device)
    device = resolve_device(args.device)
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
            f"{args.particles.name}: half maps need at least 2 particles, found {len(particles)}. "
            "Fix: give a file with more particles."
        )
    polarity = choose_polarity(particles, args.polarity, args.seed, device)
    particles.stack.sign = polarity.sign
    lock = claim_output(args.out, overwrite=args.overwrite)  # one run per folder, until run.json is written
    full, half_a, half_b = half_maps(
        particles,
        particles.rotations,
        particles.shifts,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        operators=group_operators(args.symmetry),
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
    write_json(args.out / "fsc.json", report, indent=1)
    _plot_fsc(args.out / "fsc.png", freq, values, res_0143)
    settings = {"box": args.box, "batch_size": args.batch_size, "device": device, "seed": args.seed}
    write_run_record(args.out, "backproject", settings, input_identity(particles))
    lock.release()
    print(f"{len(particles)} particles, box {particles.box}, {apix:.3f} Å/px -> {args.out}")
    print(f"polarity: {polarity.summary()}")
    print(f"half-map FSC 0.143: {res_0143:.2f} Å")
    return 0
