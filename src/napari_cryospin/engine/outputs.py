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
from ..metrics.fsc import fsc, resolution_at, soft_mask
from ..reconstruction import half_maps
from ..safe_write import save_npz, write_json

if TYPE_CHECKING:
    from .engine import Engine


MONITOR_PARTICLES = 2000
"""Per-epoch half maps use at most this many particles (the final ones use all): monitoring stays cheap."""


def _gold_standard(engine: Engine, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rot, shift = engine.current_poses()
    particles = engine.particles
    if limit is not None and limit < engine.n:
        pick = np.sort(np.random.default_rng(engine.config.seed).choice(engine.n, limit, replace=False))
        particles, rot, shift = particles.subset(pick), rot[pick], shift[pick]
    return half_maps(particles, rot, shift, seed=engine.config.seed, device=engine.device)


def _masked_fsc(a: np.ndarray, b: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    box = a.shape[0]
    mask = soft_mask(box, 0.4 * box, 0.05 * box)
    return fsc(a * mask, b * mask, voxel)


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
    }
    if not evaluate:
        return record
    voxel = engine.particles.pixel_size
    full, half_a, half_b = _gold_standard(engine, MONITOR_PARTICLES)
    freq, curve = _masked_fsc(half_a, half_b, voxel)
    rot, shift = engine.current_poses()
    epochs_dir = engine.out / "epochs"
    epochs_dir.mkdir(exist_ok=True)
    save_npz(
        epochs_dir / f"epoch_{engine.epoch:03d}.npz",
        volume=full.astype(np.float32),
        rotations=rot.astype(np.float32),
        shifts=shift.astype(np.float32),
        voxel_size=voxel,
        wall_s=engine.elapsed,
    )
    record["resolution"] = resolution_at(freq, curve, 0.143)
    record["resolution_fsc05"] = resolution_at(freq, curve, 0.5)
    record["fsc"] = [freq.tolist(), curve.tolist()]
    return record


def write_results(engine: Engine) -> str:
    """Write volume.mrc, half maps, poses.star, metrics.json and plots; return a one-line summary."""
    out, voxel = engine.out, engine.particles.pixel_size
    full, half_a, half_b = _gold_standard(engine)
    write_volume(out / "volume.mrc", full, voxel)
    if engine.config.half_maps:
        write_volume(out / "half_a.mrc", half_a, voxel)
        write_volume(out / "half_b.mrc", half_b, voxel)
    rot, shift = engine.current_poses()
    write_poses_star(out / "poses.star", engine.particles, rot, shift)
    freq, curve = _masked_fsc(half_a, half_b, voxel)
    res = resolution_at(freq, curve, 0.143)
    write_json(
        out / "metrics.json",
        {
            "config": engine.config.to_dict(),
            "epochs": engine.history,
            "final": {"resolution": res, "fsc": [freq.tolist(), curve.tolist()]},
        },
    )
    from .plots import plot_run

    plot_run(out, engine.history, (freq, curve))
    return f"done: {res:.1f} Å (half-map FSC 0.143); results in {out}"
