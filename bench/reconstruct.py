"""Accuracy against time of one cryoSPIN run on a dataset with ground truth.

Runs ``cryospin reconstruct`` (unless ``--reuse``), then scores every per-epoch map and pose set it saved
(``epochs/epoch_NNN.npz``): wall time, stage, median/mean rotation error after global alignment and hand,
median shift error, and FSC-0.5 resolution against the true map two ways: "map" aligns the saved map to the
truth (trilinear rotation, whole-voxel translation: this interpolation costs resolution), "poses"
backprojects the particles with the poses brought into the truth's frame (no interpolation: the same
estimator as the known-pose ceiling printed beside, so the two compare poses only).
Usage: ``python bench/reconstruct.py DATASET_DIR [--out DIR] [--reuse] [other cryospin reconstruct options]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.metrics.alignment import (
    align_rotations,
    fsc_to_truth,
    poses_in_truth_frame,
    shift_errors,
)
from napari_cryospin.metrics.fsc import fsc, resolution_at
from napari_cryospin.reconstruction import backproject


def _truth(folder: Path) -> tuple[Path, Path]:
    for star, vol in (
        (folder / "truth" / "particles_with_poses.star", folder / "truth" / "gt_volume.mrc"),
        (folder / "truth.star", folder / "truth_volume.mrc"),
    ):
        if star.exists() and vol.exists():
            return star, vol
    raise SystemExit(f"{folder}: no truth (truth/particles_with_poses.star or truth.star) found")


def main(argv: list[str] | None = None) -> int:
    """Run (or reuse) a reconstruction and print the per-epoch accuracy table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reuse", action="store_true", help="score an existing run folder without running")
    args, extra = p.parse_known_args(argv)
    out = args.out or Path("bench-runs") / args.dataset.name
    truth_star, truth_vol = _truth(args.dataset)
    if not args.reuse:
        extra = [a for a in extra if a != "--"]
        cmd = [
            sys.executable,
            "-m",
            "napari_cryospin.cli",
            "reconstruct",
            str(args.dataset / "particles.star"),
        ]
        subprocess.run([*cmd, "--out", str(out), "--overwrite", *extra], check=True)  # a rerun replaces it
    truth = load_particles(truth_star)
    true_map, voxel = read_volume(truth_vol)
    ceiling_map = backproject(truth, truth.rotations, truth.shifts)
    ceiling = resolution_at(*fsc(ceiling_map, true_map, voxel), 0.5)
    history = {h["epoch"]: h for h in json.loads((out / "metrics.json").read_text())["epochs"]}
    rows = []
    for path in sorted((out / "epochs").glob("epoch_*.npz")):
        d = np.load(path)
        epoch = int(path.stem.split("_")[1])
        n = len(d["rotations"])
        al = align_rotations(d["rotations"], truth.rotations[:n])
        shifts = d["shifts"] * float(d["voxel_size"]) / truth.pixel_size
        sh = shift_errors(shifts, truth.shifts[:n])
        vol = d["volume"]
        if vol.shape != true_map.shape:
            raise SystemExit(f"{path}: map box {vol.shape[0]} differs from the truth's {true_map.shape[0]}")
        res = fsc_to_truth(vol, true_map, voxel, al.rotation, al.flip).resolution(0.5)
        rot, shifts = poses_in_truth_frame(al, d["rotations"], shifts, truth.rotations, truth.shifts)
        in_frame = resolution_at(*fsc(backproject(truth, rot, shifts), true_map, voxel), 0.5)
        stage = history.get(epoch, {}).get("stage", "?")
        rows.append(
            (epoch + 1, float(d["wall_s"]), stage, al.median, al.mean, float(np.median(sh)), res, in_frame)
        )
    print(
        f"{'epoch':>5} {'wall s':>8} {'stage':<14} {'rot med°':>8} {'rot mean°':>9} "
        f"{'shift px':>8} {'FSC0.5 Å map':>12} {'FSC0.5 Å poses':>14}"
    )
    for e, t, stage, med, mean, shift, res, in_frame in rows:
        print(
            f"{e:>5} {t:>8.0f} {stage:<14} {med:>8.2f} {mean:>9.2f} {shift:>8.2f} "
            f"{res:>12.2f} {in_frame:>14.2f}"
        )
    print(f"known-pose ceiling (true poses, same particles): FSC 0.5 at {ceiling:.2f} Å")
    return 0


if __name__ == "__main__":
    sys.exit(main())
