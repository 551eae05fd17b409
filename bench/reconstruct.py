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

from napari_cryospin.metrics.alignment import fsc_to_truth
from scoring import ceiling, load_truth, score_poses


def main(argv: list[str] | None = None) -> int:
    """Run (or reuse) a reconstruction and print the per-epoch accuracy table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reuse", action="store_true", help="score an existing run folder without running")
    args, extra = p.parse_known_args(argv)
    out = args.out or Path("bench-runs") / args.dataset.name
    truth = load_truth(args.dataset)
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
    history = {h["epoch"]: h for h in json.loads((out / "metrics.json").read_text())["epochs"]}
    rows = []
    for path in sorted((out / "epochs").glob("epoch_*.npz")):
        d = np.load(path)
        epoch = int(path.stem.split("_")[1])
        shifts = d["shifts"] * float(d["voxel_size"]) / truth.particles.pixel_size
        vol = d["volume"]
        if vol.shape != truth.volume.shape:
            raise SystemExit(
                f"{path}: map box {vol.shape[0]} differs from the truth's {truth.volume.shape[0]}"
            )
        # Before the independent halves are aligned, half B's poses live in their own frame: score half A.
        half_a = None
        if "halves_aligned" in d and not bool(d["halves_aligned"]):
            half_a = np.flatnonzero(d["halves"] == 0)
        score = score_poses(d["rotations"], shifts, truth, rows=half_a)
        al = score.alignment
        res = fsc_to_truth(vol, truth.volume, truth.voxel, al.rotation, al.flip).resolution(0.5)
        stage = history.get(epoch, {}).get("stage", "?")
        rows.append(
            (
                epoch + 1,
                float(d["wall_s"]),
                stage,
                score.rot_median,
                score.rot_mean,
                score.shift_median,
                res,
                score.fsc05,
            )
        )
    ceiling05, _ = ceiling(truth, len(d["rotations"]) if rows else None)
    print(
        f"{'epoch':>5} {'wall s':>8} {'stage':<14} {'rot med°':>8} {'rot mean°':>9} "
        f"{'shift px':>8} {'FSC0.5 Å map':>12} {'FSC0.5 Å poses':>14}"
    )
    for e, t, stage, med, mean, shift, res, in_frame in rows:
        print(
            f"{e:>5} {t:>8.0f} {stage:<14} {med:>8.2f} {mean:>9.2f} {shift:>8.2f} "
            f"{res:>12.2f} {in_frame:>14.2f}"
        )
    print(f"known-pose ceiling (true poses, same particles): FSC 0.5 at {ceiling05:.2f} Å")
    return 0


if __name__ == "__main__":
    sys.exit(main())
