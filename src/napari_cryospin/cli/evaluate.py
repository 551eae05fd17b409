"""``cryospin evaluate``: pose errors after global alignment and map FSC against a simulation's truth."""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path

import numpy as np

from ..data.safe_write import write_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` and its options."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score estimated poses and a map against the ground truth",
        description="Rotation errors (degrees, after one global rotation and the better hand), shift errors "
        "(pixels) and FSC against the true map (resolution at 0.5 and 0.143). Particles are matched by "
        "image (stack file and image number; a copied stack holds the same images), in any row order; "
        "poses that miss an image of the truth or name another are refused. When the truth marks junk "
        "(rlnClassNumber ≠ 1, as cryospin simulate writes), poses are scored on the particles only and the "
        "run's junk score (rlnParticleSelectZScore) gets its ROC AUC.",
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


SAMPLE_BYTES = 1 << 16
"""Image bytes read at each end of a stack to tell it from another (a copy has the same)."""


def _stack_id(stack) -> str:
    """A stack's identity by content: its shape and the first and last images (headers differ in copies)."""
    data = stack.data
    count = max(1, SAMPLE_BYTES // (data[0].nbytes or 1))
    digest = hashlib.sha256(str(data.shape).encode())
    digest.update(np.ascontiguousarray(data[:count]).tobytes())
    digest.update(np.ascontiguousarray(data[-count:]).tobytes())
    return digest.hexdigest()


def _image_ids(particles) -> list[str]:
    """One identity per particle: image number @ its stack's content identity."""
    stack = particles.stack
    files = [_stack_id(stack.stack(f)) for f in range(len(stack.files))]
    return [f"{i + 1}@{files[f]}" for f, i in zip(stack.file_index, stack.image_index, strict=True)]


def _match(est, truth, est_path: Path, truth_path: Path):
    """``est``'s particles in ``truth``'s order; refuses (one line) when the two hold different images."""
    est_ids, truth_ids = _image_ids(est), _image_ids(truth)
    row = {image: r for r, image in enumerate(est_ids)}
    missing = [r for r, image in enumerate(truth_ids) if image not in row]
    extra = sorted(set(row) - set(truth_ids), key=row.get)
    if missing or extra:
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} of the {len(truth)} images of {truth_path} have no pose there "
                f"(e.g. {truth.image_name(missing[0])})"
            )
        if extra:
            problems.append(
                f"{len(extra)} of its images are not in {truth_path} (e.g. {est.image_name(row[extra[0]])})"
            )
        raise ValueError(
            f"{est_path}: {', and '.join(problems)}. Fix: give the poses of the truth's particles (images "
            f"are matched by stack file and image number, in any order)."
        )
    return est.subset([row[image] for image in truth_ids])


def _shape(volume) -> str:
    """``32³`` for a cube, else the sizes (z×y×x)."""
    if len(set(volume.shape)) == 1:
        return f"{volume.shape[0]}³"
    return "×".join(str(size) for size in volume.shape)


def _read_map(path: Path):
    from ..data.mrc import read_volume

    volume, voxel = read_volume(path)
    if len(set(volume.shape)) != 1:
        raise ValueError(
            f"{path} is {_shape(volume)}, not a cubic map (a particle stack?). Fix: give a 3D map (.mrc)."
        )
    return volume, voxel


def _write_report(path: Path, report: dict) -> None:
    """Write the --json report; an OS error names the file and the option."""
    try:
        write_json(path, report, indent=1)
    except OSError as exc:
        raise OSError(
            f"{path}: cannot write the report ({exc.strerror or exc}). Fix: give --json a file path "
            f"in a folder you can write to."
        ) from exc


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    """Compute and print the scores; a map alone is aligned by a rotation and hand search."""
    from ..metrics.alignment import align_rotations, fsc_to_truth, shift_errors
    from ..metrics.junk_auc import JUNK_COLUMN, roc_auc, truth_junk

    if args.poses is None and args.volume is None:
        raise ValueError("nothing to evaluate. Fix: give --poses, --volume or both.")
    if args.volume is not None and args.volume_truth is None:
        raise ValueError("--volume needs the true map. Fix: add --volume-truth MAP.mrc.")
    if args.json is not None and args.json.is_dir():
        raise ValueError(
            f"{args.json}: is a folder. Fix: give --json a file path, e.g. {args.json / 'eval.json'}."
        )
    truth = _load_poses(args.truth, "ground-truth")
    report: dict[str, float | bool | int | str] = {"truth": str(args.truth)}
    rows: list[tuple[str, str]] = []
    rotation = flip = None
    if args.poses is not None:
        est = _match(_load_poses(args.poses, "estimated-poses"), truth, args.poses, args.truth)
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
        vol, voxel = _read_map(args.volume)
        true_vol, true_voxel = _read_map(args.volume_truth)
        if vol.shape != true_vol.shape:
            raise ValueError(
                f"{args.volume} is {_shape(vol)} but {args.volume_truth} is {_shape(true_vol)}. "
                f"Fix: compare maps of the same box."
            )
        if true_voxel == 1.0 and voxel != 1.0:
            true_voxel = voxel
        if not math.isclose(voxel, true_voxel, rel_tol=1e-3):
            raise ValueError(
                f"{args.volume} has {voxel:.4f} Å voxels but {args.volume_truth} has "
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
        _write_report(args.json, report)
    return 0
