"""``cryospin simulate``: particles with known poses from a map, a PDB/mmCIF model or the bundled map."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from ..data.mrc import read_volume
from ..resources import bundled_map_path
from ..simulation.atomic import is_atomic_model, model_to_map
from ..simulation.nuisances import Nuisances
from ..simulation.simulate import simulate_to_dir

_MAP_SUFFIXES = (".mrc", ".map", ".mrcs")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``simulate`` and its options."""
    parser = subparsers.add_parser(
        "simulate",
        help="simulate particle images with known poses",
        description="Simulate a RELION particle stack (particles.mrcs, particles.star without poses) "
        "and its ground truth (truth.star, truth_volume.mrc) from a map.",
    )
    parser.add_argument(
        "map", help="density map (.mrc), atomic model (.pdb/.cif, optionally .gz) or 'bundled'"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=1000, help="number of particles (default 1000)")
    parser.add_argument("--box", type=int, help="image size in pixels; the map is Fourier-resized to it")
    parser.add_argument(
        "--voxel-size", type=float, help="voxel size of the input in Å (overrides the header)"
    )
    parser.add_argument("--snr", type=float, default=0.1, help="signal/noise variance ratio; inf for none")
    parser.add_argument(
        "--defocus", type=float, nargs=2, default=(10000.0, 30000.0), metavar=("MIN", "MAX"), help="Å"
    )
    parser.add_argument("--astigmatism", type=float, help="defocus U − V in Å (default none)")
    parser.add_argument("--max-shift", type=float, default=3.0, help="in-plane shifts uniform in ±PX pixels")
    parser.add_argument("--voltage", type=float, default=300.0, help="kV")
    parser.add_argument("--cs", type=float, default=2.7, help="spherical aberration in mm")
    parser.add_argument("--amplitude-contrast", type=float, default=0.1)
    real = parser.add_argument_group("nuisances of real stacks (default: none; docs/simulation.md)")
    real.add_argument(
        "--bfactor", type=float, default=0.0, help="CTF B-factor envelope in Å² (rlnCtfBfactor)"
    )
    real.add_argument(
        "--coloured-noise", action="store_true", help="noise with detector MTF × ice spectrum (more at low s)"
    )
    real.add_argument("--junk", type=float, default=0.0, metavar="FRACTION", help="share of junk images, < 1")
    real.add_argument(
        "--polarity",
        choices=("dark", "white"),
        default="dark",
        help="white: protein white, as RELION extracts",
    )
    real.add_argument(
        "--normalize", action="store_true", help="background mean 0, sd 1 per image (relion_preprocess)"
    )
    real.add_argument(
        "--optics2",
        type=float,
        nargs=3,
        metavar=("KV", "CS", "AC"),
        help="a second optics group (kV, Cs mm, amplitude contrast) for half the particles",
    )
    real.add_argument(
        "--intensity-spread", type=float, default=0.0, help="sd of the log of a per-particle signal factor"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--no-oversampling", action="store_true", help="slice the map without 2× padding")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing simulation in --out")
    parser.set_defaults(run=run)
    return parser


def load_map(source: str, box: int | None, voxel_size: float | None) -> tuple[np.ndarray, float]:
    """The map and its voxel size (Å) from an MRC file, a PDB/mmCIF model or ``bundled``."""
    if source == "bundled":
        return load_map(str(bundled_map_path(64)), None, None)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found. Fix: check the path, or use 'bundled' for the shipped map."
        )
    if is_atomic_model(path):
        return model_to_map(path, box or 64, voxel_size)
    if path.suffix.lower() not in _MAP_SUFFIXES:
        raise ValueError(
            f"{path.name}: unknown kind of file. Fix: give a map (.mrc/.map), an atomic model "
            f"(.pdb/.ent/.cif/.mmcif) or 'bundled'."
        )
    volume, header_voxel = read_volume(path)
    if len(set(volume.shape)) != 1:
        raise ValueError(
            f"{path.name}: the map is {volume.shape[2]}x{volume.shape[1]}x{volume.shape[0]} voxels, not a "
            f"cube. Fix: pad or crop it to a cube (e.g. relion_image_handler --new_box)."
        )
    if voxel_size is None and header_voxel == 1.0:
        raise ValueError(
            f"{path.name}: its header gives no voxel size (reads 1.0 Å). Fix: pass --voxel-size (Å)."
        )
    return volume, float(voxel_size or header_voxel)


def run(args: argparse.Namespace) -> int:
    """Simulate into ``args.out`` and print a summary."""
    out = Path(args.out)
    if (out / "particles.mrcs").exists() and not args.overwrite:
        raise ValueError(
            f"{out}: already holds particles.mrcs. Fix: choose another --out or pass --overwrite."
        )
    volume, voxel = load_map(args.map, args.box, args.voxel_size)
    snr = None if math.isinf(args.snr) else args.snr
    result = simulate_to_dir(
        volume,
        voxel,
        args.n,
        out,
        box=args.box,
        snr=snr,
        defocus=tuple(args.defocus),
        astigmatism=args.astigmatism,
        max_shift_px=args.max_shift,
        voltage=args.voltage,
        cs=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        seed=args.seed,
        batch_size=args.batch_size,
        oversampling=not args.no_oversampling,
        device=args.device,
        nuisances=Nuisances(
            bfactor=args.bfactor,
            coloured_noise=args.coloured_noise,
            junk_fraction=args.junk,
            polarity=args.polarity,
            normalize=args.normalize,
            optics2=None if args.optics2 is None else tuple(args.optics2),
            intensity_spread=args.intensity_spread,
        ),
    )
    box = result.volume.shape[0]
    noise = "no noise" if result.snr is None else f"SNR {result.snr:g} (noise σ {result.noise_sigma:.4g})"
    print(f"simulated {len(result)} particles, {box} px at {result.pixel_size:.4f} Å/px, {noise}")
    if result.junk.any():
        print(f"{int(result.junk.sum())} junk images (truth.star rlnClassNumber 2 and 3; junk.npy)")
    print(f"wrote {out}/particles.mrcs, particles.star (no poses), truth.star, truth_volume.mrc, junk.npy")
    return 0
