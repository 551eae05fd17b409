"""The pose-precision floor of a simulated set: how far the best rotation is from the truth with the TRUE map.

The known-pose FSC ceiling says how good a map the particles allow; this says how good the poses can be.
For each particle, rotations ``R_true·Δ`` (Δ uniform in a ball of ``--ball`` degrees, the truth itself
left out, so the grid does not favour it) are scored by normalised correlation of the CTF-modulated slice
of the true map with the image at the true shift; the floor is the distance of the best one from the truth.
A run cannot be expected to beat it: no map is better than the true one.
Usage: ``python bench/pose_floor.py SET_DIR [SET_DIR ...] [--n 300] [--ball 12] [--candidates 2000]``
(SET_DIR: ``truth.star`` + ``truth_volume.mrc``, or ribosome70s's ``truth/`` layout). Prints one table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_cryospin.geometry.rotations import axis_angle_to_matrix
from napari_cryospin.model.likelihood import FrequencyDisk, prepare_batch
from napari_cryospin.model.volume import HartleyVolume
from napari_cryospin.physics.fourier import fourier_to_hartley
from napari_cryospin.physics.shifts import centering_phase
from scoring import load_truth


def perturbations(n: int, ball_deg: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rotations (n, 3, 3) uniform in a ball of ``ball_deg`` around the identity; their angles (°)."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) ** (1 / 3) * np.radians(ball_deg)
    axis = torch.randn(n, 3, generator=g)
    axis = axis / axis.norm(dim=1, keepdim=True)
    return axis_angle_to_matrix(axis * angle[:, None]), torch.rad2deg(angle)


@torch.no_grad()
def pose_floor(folder: Path, n: int, ball_deg: float, candidates: int, batch: int = 16) -> dict:
    """Median / mean angle (°) of each particle's best-correlating rotation near the truth, the share within
    3°, the angle of the candidate nearest to the truth (the grid's resolution) and the share at the edge."""
    truth = load_truth(folder)  # the stack read with its detected polarity
    particles, volume = truth.particles, truth.volume
    box = particles.box
    disk = FrequencyDisk(box, particles.pixel_size, torch.device("cpu"))
    k = disk.k
    vol = HartleyVolume(box, torch.zeros(1, box, box, box))
    vol.set_from_real_space(torch.from_numpy(volume))
    pert, angle = perturbations(candidates, ball_deg)
    rows = np.arange(min(n, len(particles)))
    best = []
    for start in range(0, len(rows), batch):
        idx = rows[start : start + batch]
        images = torch.from_numpy(np.asarray(particles.stack[idx], np.float32))
        b = prepare_batch(torch.as_tensor(idx), images, particles.ctf, disk)
        rot = torch.from_numpy(particles.rotations[idx]).float()
        model = vol.slices(rot[:, None] @ pert[None], k, 0) * b.ctf[:, None]
        phase = centering_phase(k / box, torch.from_numpy(particles.shifts[idx]).float())
        obs = fourier_to_hartley(b.spectrum * phase)
        ncc = (model * obs[:, None]).sum(-1) / model.norm(dim=-1).clamp_min(1e-12)
        best.append(angle[ncc.argmax(1)])
    err = torch.cat(best).numpy()
    return {
        "set": folder.name,
        "particles": len(rows),
        "box": box,
        "pixel_A": particles.pixel_size,
        "floor_median": float(np.median(err)),
        "floor_mean": float(err.mean()),
        "within_3": float(np.mean(err < 3)),
        "spacing": float(angle.min()),
        "at_edge": float(np.mean(err > 0.9 * ball_deg)),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the pose floor of each set as one table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", type=Path, nargs="+")
    p.add_argument("--n", type=int, default=300, help="particles per set (the first n)")
    p.add_argument("--ball", type=float, default=12.0, help="degrees around the truth searched")
    p.add_argument("--candidates", type=int, default=2000)
    args = p.parse_args(argv)
    print("| set | n | box | Å/px | floor median ° | floor mean ° | ≤ 3° | nearest candidate ° | at edge |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.sets:
        r = pose_floor(folder, args.n, args.ball, args.candidates)
        print(
            f"| {r['set']} | {r['particles']} | {r['box']} | {r['pixel_A']:.2f} | {r['floor_median']:.2f} | "
            f"{r['floor_mean']:.2f} | {r['within_3']:.0%} | {r['spacing']:.2f} | {r['at_edge']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
