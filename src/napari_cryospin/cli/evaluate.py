"""``cryospin evaluate``: pose errors after global alignment and map FSC against a simulation's truth."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..safe_write import write_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` and its options."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score estimated poses and a map against the ground truth",
        description="Rotation errors (degrees, after one global rotation and the better hand), shift errors "
        "(pixels) and FSC against the true map (resolution at 0.5 and 0.143). Particles are matched by "
        "row order. When the truth marks junk (rlnClassNumber ≠ 1, as cryospin simulate writes), poses are "
        "scored on the particles only and the run's junk score (rlnParticleSelectZScore) gets its ROC AUC.",
    )
    parser.add_argument("--truth", type=Path, required=True, help="STAR file with the true poses")
    parser.add_argument("--volume-truth", type=Path, help="the true map (.mrc)")
    parser.add_argument("--poses", type=Path, help="STAR (or .cs) file with the estimated poses")
    parser.add_argument("--volume", type=Path, help="the estimated map (.mrc)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.set_defaults(run=run)
    return parser


def _load_poses(path: Path, what: str):
    from ..data.particles import load_particles

    particles = load_particles(path)
    if particles.rotations is None or particles.shifts is None:
        raise ValueError(f"{path.name}: has no poses (angles and origins). Fix: give the {what} STAR file.")
    return particles


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    """Compute and print the scores; a map alone is aligned by a rotation and hand search."""
    import numpy as np

    from ..data.mrc import read_volume
    from ..metrics.alignment import align_rotations, fsc_to_truth, shift_errors
    from ..metrics.junk_auc import JUNK_COLUMN, roc_auc, truth_junk

    if args.poses is None and args.volume is None:
        raise ValueError("nothing to evaluate. Fix: give --poses, --volume or both.")
    if args.volume is not None and args.volume_truth is None:
        raise ValueError("--volume needs the true map. Fix: add --volume-truth MAP.mrc.")
    truth = _load_poses(args.truth, "ground-truth")
    report: dict[str, float | bool | int | str] = {"truth": str(args.truth)}
    rows: list[tuple[str, str]] = []
    rotation = flip = None
    if args.poses is not None:
        est = _load_poses(args.poses, "estimated-poses")
        if len(est) != len(truth):
            raise ValueError(
                f"{args.poses.name} has {len(est)} particles but {args.truth.name} has {len(truth)}. "
                f"Fix: give the poses of the same particles, in the same order."
            )
        junk = truth_junk(truth.table)
        real = np.ones(len(truth), bool) if junk is None else ~junk
        aligned = align_rotations(est.rotations[real], truth.rotations[real])
        rotation, flip = aligned.rotation, aligned.flip
        shifts = shift_errors(est.shifts[real] * est.pixel_size / truth.pixel_size, truth.shifts[real])
        if junk is not None and junk.any():
            report.update(junk=int(junk.sum()))
            rows.append(("junk in the truth (not scored)", str(int(junk.sum()))))
            if est.table is not None and JUNK_COLUMN in est.table.columns:
                auc = roc_auc(est.table[JUNK_COLUMN].to_numpy(), junk)
                report.update(junk_auc=auc)
                rows.append((f"junk score ROC AUC ({JUNK_COLUMN})", f"{auc:.3f}"))
        report.update(
            n=int(real.sum()),
            flip=aligned.flip,
            rotation_error_mean_deg=aligned.mean,
            rotation_error_median_deg=aligned.median,
            shift_error_mean_px=float(shifts.mean()),
            shift_error_median_px=float(np.median(shifts)),
        )
        rows += [
            ("particles scored", str(int(real.sum()))),
            ("hand", "mirrored" if aligned.flip else "same"),
            ("rotation error mean (deg)", f"{aligned.mean:.2f}"),
            ("rotation error median (deg)", f"{aligned.median:.2f}"),
            ("shift error mean (px)", f"{shifts.mean():.2f}"),
            ("shift error median (px)", f"{np.median(shifts):.2f}"),
        ]
    if args.volume is not None:
        vol, voxel = read_volume(args.volume)
        true_vol, true_voxel = read_volume(args.volume_truth)
        if vol.shape != true_vol.shape:
            raise ValueError(
                f"{args.volume.name} is {vol.shape[0]}³ but {args.volume_truth.name} is "
                f"{true_vol.shape[0]}³. Fix: compare maps of the same box."
            )
        if true_voxel == 1.0 and voxel != 1.0:
            true_voxel = voxel
        if not math.isclose(voxel, true_voxel, rel_tol=1e-3):
            raise ValueError(
                f"{args.volume.name} has {voxel:.4f} Å voxels but {args.volume_truth.name} has "
                f"{true_voxel:.4f}. Fix: compare maps at the same voxel size."
            )
        comparison = fsc_to_truth(vol, true_vol, true_voxel, rotation, flip)
        res05, res0143 = comparison.resolution(0.5), comparison.resolution(0.143)
        report.update(fsc_resolution_05=res05, fsc_resolution_0143=res0143, map_flip=comparison.flip)
        rows += [
            ("map aligned by", "poses" if rotation is not None else "rotation search"),
            ("FSC 0.5 vs truth (Å)", f"{res05:.2f}"),
            ("FSC 0.143 vs truth (Å)", f"{res0143:.2f}"),
        ]
    print(_table(rows))
    if args.json is not None:
        write_json(args.json, report, indent=1)
    return 0
