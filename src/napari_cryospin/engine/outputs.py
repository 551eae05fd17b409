"""What a run leaves on disk: per-epoch records and maps, and the final map, half maps, poses and plots.

The final map is a CTF-weighted backprojection with the final poses (the same estimator as the
known-pose ceiling), and the half maps come from two disjoint particle halves, so their FSC is the
gold-standard resolution of what the poses achieve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..data.mrc import write_volume
from ..data.poses_out import write_poses_star
from ..metrics.fsc import resolution_at
from ..reconstruction import accumulate, solve_map
from ..safe_write import save_npz, write_json
from .validity import masked_fsc, radius_at, verdict

if TYPE_CHECKING:
    from .engine import Engine


MONITOR_PARTICLES = 2000
"""Per-epoch half maps use at most this many particles (the final ones use all): monitoring stays cheap."""


def _gold_standard(engine: Engine, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(full, half A, half B) backprojections with the current poses, over the engine's own halves (at most
    ``limit`` particles in all, split evenly), so the half maps never mix the halves the engine kept apart."""
    rot, shift = engine.current_poses()
    halves = engine.halves.cpu().numpy()
    rng = np.random.default_rng(engine.config.seed)
    acc = []
    for c in (0, 1):
        members = np.flatnonzero(halves == c)
        if limit is not None and 2 * len(members) > limit:
            members = np.sort(rng.choice(members, limit // 2, replace=False))
        part = members[engine.dp.block(len(members))]  # each process grids its block; the sums are added
        acc.append(engine.dp.sum_blocks(accumulate(engine.particles, rot, shift, part, device=engine.device)))
    return solve_map(acc[0] + acc[1]), solve_map(acc[0]), solve_map(acc[1])


def _masked_fsc(a: np.ndarray, b: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    box = a.shape[0]
    curve = masked_fsc(a, b)
    return np.arange(len(curve)) / (box * voxel), curve


def write_epoch_record(
    engine: Engine, loss: float, ips: float, stable: float | None, change: float | None, evaluate: bool
) -> dict:
    """The epoch's record; when ``evaluate``, also measure its half-map FSC and save its map and poses."""
    record = {
        "epoch": engine.epoch,
        "stage": engine.stage.value,
        "wall_s": engine.elapsed,
        "loss": loss,
        "images_per_s": ips,
        "head_fractions": engine._head_fractions().tolist(),
        "stable_heads": stable,
        "median_pose_change_deg": change,
        "resolution": None,
        "resolution_fsc05": None,
        "fsc": None,
        "switch_reason": engine.switch_reason,
        "halves_aligned": engine.halves_aligned,
    }
    if not evaluate:
        return record
    voxel = engine.particles.pixel_size
    full, half_a, half_b = _gold_standard(engine, MONITOR_PARTICLES)
    rot, shift = engine.current_poses()
    epochs_dir = engine.out / "epochs"
    if engine.dp.main:
        epochs_dir.mkdir(exist_ok=True)
        save_npz(
            epochs_dir / f"epoch_{engine.epoch:03d}.npz",
            volume=full.astype(np.float32),
            rotations=rot.astype(np.float32),
            shifts=shift.astype(np.float32),
            voxel_size=voxel,
            wall_s=engine.elapsed,
            halves=engine.halves.cpu().numpy().astype(np.int8),
            halves_aligned=engine.halves_aligned,
        )
    if not engine.halves_aligned:  # half B is still in its own frame: nothing to compare yet
        return record
    freq, curve = _masked_fsc(half_a, half_b, voxel)
    record["resolution"] = resolution_at(freq, curve, 0.143)
    record["resolution_fsc05"] = resolution_at(freq, curve, 0.5)
    record["fsc"] = [freq.tolist(), curve.tolist()]
    return record


def write_results(engine: Engine) -> str:
    """Write volume.mrc, half maps, poses.star, metrics.json and plots; return a one-line summary."""
    out, voxel = engine.out, engine.particles.pixel_size
    full, half_a, half_b = _gold_standard(engine)
    if not engine.dp.main:  # the maps are every process's work; the files are process 0's
        return ""
    write_volume(out / "volume.mrc", full, voxel)
    if engine.config.half_maps:
        write_volume(out / "half_a.mrc", half_a, voxel)
        write_volume(out / "half_b.mrc", half_b, voxel)
    rot, shift = engine.current_poses()
    write_poses_star(out / "poses.star", engine.particles, rot, shift)
    freq, curve = _masked_fsc(half_a, half_b, voxel)
    res = resolution_at(freq, curve, 0.143)
    # The radius the halves were judged at (the planned top when they never were).
    top = (
        engine.agreement["top_radius"] if engine.agreement else engine.schedule.explored_radius(engine.epoch)
    )
    validity = verdict(engine.agreement, radius_at(curve, 0.143), top, engine.ctf_check)
    write_json(
        out / "metrics.json",
        {
            "config": engine.config.to_dict(),
            "polarity": engine.polarity.to_dict(),
            "epochs": engine.history,
            "final": {
                "resolution": res,
                "fsc": [freq.tolist(), curve.tolist()],
                "halves_agreement": engine.agreement,
                "validity": validity,
            },
        },
    )
    from .plots import plot_run

    plot_run(out, engine.history, (freq, curve))
    return (
        f"done: {res:.1f} Å (half-map FSC 0.143), {engine.polarity.summary()}; {validity['message']}; "
        f"results in {out}"
    )
