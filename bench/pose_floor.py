"""The pose-precision floor of a simulated set: how far the best rotation is from the truth with the TRUE map.

The known-pose FSC ceiling says how good a map the particles allow; this says how good the poses can be.
For each particle, rotations ``R_true·Δ`` (Δ uniform in a ball of ``--ball`` degrees, the truth itself
left out, so the grid does not favour it) are scored by normalised correlation of the CTF-modulated slice
of the true map with the image at the true shift; the floor is the distance of the best one from the truth.
A run cannot be expected to beat it: no map is better than the true one.
With ``--distant G`` it also says how many particles no map can pose: the best of ``G`` uniform rotations
≥ ``--distant-deg`` (90) from the truth (the five best each refined in an 8° ball) is compared with the best
near the truth; where it correlates better, even the true map puts the particle on a distant pose (a
pseudo-symmetric mate, or too little signal; for asymmetric particles only, as a symmetric one's mates fit
by construction).
``--whiten`` weighs frequencies by the stack's measured noise, as the engine does.
``--reference known-half`` scores against the best map a gold-standard run could hold instead of the true
map: the backprojection, at their true poses, of half the other particles (the probed ones left out, so no
image meets its own noise). Its floor is what a run's pose error can be compared with. With ``--symmetry``
that backprojection imposes the group, as a run with ``--symmetry`` does (the near search is within one
asymmetric unit for any group whose mates are further apart than the ball).
Usage: ``python bench/pose_floor.py SET_DIR [SET_DIR ...] [--n 300] [--ball 12] [--candidates 2000]
[--distant 20000] [--distant-deg 90] [--whiten] [--reference true|known-half] [--symmetry C1]``
(SET_DIR: ``truth.star`` + ``truth_volume.mrc``, or ribosome70s's ``truth/`` layout; the first n images
not listed in its ``junk.npy``). Prints one table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_cryospin.geometry.rotations import axis_angle_to_matrix, random_rotations
from napari_cryospin.geometry.symmetry import group_operators
from napari_cryospin.model.likelihood import FrequencyDisk, prepare_batch
from napari_cryospin.model.noise import estimate_noise
from napari_cryospin.model.volume import HartleyVolume
from napari_cryospin.physics.fourier import fourier_to_hartley
from napari_cryospin.physics.reconstruction import backproject
from napari_cryospin.physics.shifts import centering_phase
from scoring import load_truth


def perturbations(n: int, ball_deg: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rotations (n, 3, 3) uniform in a ball of ``ball_deg`` around the identity; their angles (°)."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) ** (1 / 3) * np.radians(ball_deg)
    axis = torch.randn(n, 3, generator=g)
    axis = axis / axis.norm(dim=1, keepdim=True)
    return axis_angle_to_matrix(axis * angle[:, None]), torch.rad2deg(angle)


def _ncc(model: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """Normalised correlation (B, C) of CTF-modulated slices (B, C, P) with images (B, P)."""
    return (model * obs[:, None]).sum(-1) / model.norm(dim=-1).clamp_min(1e-12)


def _best_distant(
    vol: HartleyVolume,
    k: torch.Tensor,
    grid: torch.Tensor,
    grid_slices: torch.Tensor,
    rot: torch.Tensor,
    obs: torch.Tensor,
    ctf: torch.Tensor,
    refine: torch.Tensor,
    distant_deg: float = 90.0,
    top: int = 5,
) -> torch.Tensor:
    """Best correlation (B,) of a pose ≥ ``distant_deg`` from each true rotation ``rot`` (B, 3, 3): the
    ``top`` best of the uniform ``grid`` (G, 3, 3) (slices (G, P)), each refined over ``refine`` (R, 3, 3)
    around it."""
    scores = ((obs * ctf) @ grid_slices.T) / ((ctf**2) @ (grid_slices**2).T).sqrt().clamp_min(1e-12)
    trace = torch.einsum("bij,gij->bg", rot, grid)  # tr(Rᵀ·G) = 1 + 2·cos(angle between R and G)
    scores[trace > 1 + 2 * np.cos(np.radians(distant_deg))] = -np.inf  # nearer than distant_deg
    picks = grid[scores.topk(top, dim=1).indices]  # (B, top, 3, 3)
    cand = (picks[:, :, None] @ refine[None, None]).reshape(len(rot), -1, 3, 3)
    return _ncc(vol.slices(cand, k, 0) * ctf[:, None], obs).max(1).values


@torch.no_grad()
def pose_floor(
    folder: Path,
    n: int,
    ball_deg: float,
    candidates: int,
    distant: int = 0,
    whiten: bool = False,
    batch: int = 16,
    reference: str = "true",
    symmetry: str = "C1",
    distant_deg: float = 90.0,
) -> dict:
    """Median / mean angle (°) of each particle's best-correlating rotation near the truth, the share within
    3°, the angle of the candidate nearest to the truth (the grid's resolution) and the share at the edge;
    with ``distant`` > 0, the share whose best pose ≥ ``distant_deg`` away correlates better than the best
    near.
    ``reference``: "true" (the true map) or "known-half" (see the module doc), imposing ``symmetry``."""
    truth = load_truth(folder)  # the stack read with its detected polarity
    particles, volume = truth.particles, truth.volume
    box = particles.box
    disk = FrequencyDisk(box, particles.pixel_size, torch.device("cpu"))
    k = disk.k
    noise = estimate_noise(particles, 1.0, disk.radius) if whiten else None
    junk_file = folder / "junk.npy"  # a simulated set's junk: no pose to find
    junk = np.load(junk_file)[: len(particles)] if junk_file.exists() else np.zeros(len(particles), bool)
    kept = np.flatnonzero(~junk)
    rows = kept[:n]
    if reference == "known-half":  # half of the other kept particles
        operators = None if symmetry.upper() == "C1" else group_operators(symmetry)
        volume = backproject(
            particles, particles.rotations, particles.shifts, indices=kept[n:][::2], operators=operators
        )
    vol = HartleyVolume(box, torch.zeros(1, box, box, box))
    vol.set_from_real_space(torch.from_numpy(np.ascontiguousarray(volume, np.float32)))
    pert, angle = perturbations(candidates, ball_deg)
    if distant:
        grid = random_rotations(distant, torch.Generator().manual_seed(1))
        grid_slices = torch.cat([vol.slices(grid[i : i + 2000], k, 0) for i in range(0, distant, 2000)])
        refine, _ = perturbations(400, 8.0, seed=2)
    best, far = [], []
    for start in range(0, len(rows), batch):
        idx = rows[start : start + batch]
        images = torch.from_numpy(np.asarray(particles.stack[idx], np.float32))
        weights = None if noise is None else noise.weights(idx)
        b = prepare_batch(torch.as_tensor(idx), images, particles.ctf, disk, weights)
        rot = torch.from_numpy(particles.rotations[idx]).float()
        model = vol.slices(rot[:, None] @ pert[None], k, 0) * b.ctf[:, None]
        phase = centering_phase(k / box, torch.from_numpy(particles.shifts[idx]).float())
        obs = fourier_to_hartley(b.spectrum * phase)
        near = _ncc(model, obs)
        best.append(angle[near.argmax(1)])
        if distant:
            far.append(
                _best_distant(vol, k, grid, grid_slices, rot, obs, b.ctf, refine, distant_deg)
                > near.max(1).values
            )
    err = torch.cat(best).numpy()
    return {
        "set": folder.name,
        "reference": reference if symmetry.upper() == "C1" else f"{reference} {symmetry}",
        "particles": len(rows),
        "box": box,
        "pixel_A": particles.pixel_size,
        "floor_median": float(np.median(err)),
        "floor_mean": float(err.mean()),
        "within_3": float(np.mean(err < 3)),
        "spacing": float(angle.min()),
        "at_edge": float(np.mean(err > 0.9 * ball_deg)),
        "distant_wins": float(torch.cat(far).float().mean()) if distant else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the pose floor of each set as one table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", type=Path, nargs="+")
    p.add_argument("--n", type=int, default=300, help="particles per set (the first n)")
    p.add_argument("--ball", type=float, default=12.0, help="degrees around the truth searched")
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--distant", type=int, default=0, help="uniform rotations searched far away (0: none)")
    p.add_argument("--distant-deg", type=float, default=90.0, help="how far (°) a distant pose is at least")
    p.add_argument("--whiten", action="store_true", help="weigh frequencies by the measured noise")
    p.add_argument(
        "--reference",
        choices=("true", "known-half"),
        default="true",
        help="the true map, or the known-pose backprojection of half the other particles",
    )
    p.add_argument("--symmetry", default="C1", help="point group the known-pose half map imposes")
    args = p.parse_args(argv)
    if args.distant and args.symmetry.upper() != "C1":
        p.error("--distant compares with poses far away: for asymmetric particles only")
    print(
        "| set | reference | n | box | Å/px | floor median ° | floor mean ° | ≤ 3° | nearest candidate ° | "
        "at edge | distant pose wins |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for folder in args.sets:
        r = pose_floor(
            folder,
            args.n,
            args.ball,
            args.candidates,
            args.distant,
            args.whiten,
            reference=args.reference,
            symmetry=args.symmetry,
            distant_deg=args.distant_deg,
        )
        wins = "—" if r["distant_wins"] is None else f"{r['distant_wins']:.1%}"
        print(
            f"| {r['set']} | {r['reference']} | {r['particles']} | {r['box']} | {r['pixel_A']:.2f} | "
            f"{r['floor_median']:.2f} | "
            f"{r['floor_mean']:.2f} | {r['within_3']:.0%} | {r['spacing']:.2f} | {r['at_edge']:.0%} | "
            f"{wins} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
