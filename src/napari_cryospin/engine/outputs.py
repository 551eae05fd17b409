"""What a run leaves on disk: per-epoch records and maps, and the final map, half maps, poses and plots.

The final map is a CTF-weighted backprojection with the final poses (the same estimator as the
known-pose ceiling), and the half maps come from two disjoint particle halves, so their FSC is the
gold-standard resolution of what the poses achieve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.poses_out import write_poses_star
from ..data.safe_write import save_npz, write_json
from ..metrics.alignment import register_maps
from ..metrics.fsc import resolution_at
from ..metrics.symmetry_detect import detect_symmetry
from ..physics.reconstruction import accumulate, solve_map
from ..postprocess.pipeline import Postprocessed, postprocess, write_postprocessed
from .full_size import FullSizeMaps, write_final_maps
from .junk import KEPT_STAR, score_junk, write_kept
from .mates import check_mates
from .particle_scores import particle_scores
from .run_results import labelled_curves
from .validity import masked_fsc, radius_at, verdict

if TYPE_CHECKING:
    from .run_model import RunModel

log = logging.getLogger(__name__)
"""Each final step is logged at INFO before it starts (the CLI prints them: they take minutes on big data)."""

MONITOR_PARTICLES = 2000
"""Per-epoch half maps use at most this many particles (the final ones use all): monitoring stays cheap."""

REGISTER_MIN_VOXELS = 0.02
"""Half B's map is moved onto half A's only when they are further apart than this (voxels)."""


def _gold_standard(
    model: RunModel, limit: int | None = None, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(full, half A, half B) backprojections with the current poses, over the engine's own halves (at most
    ``limit`` particles in all, split evenly; only those where ``keep`` (n,) is true), so the half maps
    never mix the halves the engine kept apart; and the poses (n, 3, 3) and shifts (n, 2) px they used.

    Independent halves are brought into one frame at the end of exploration and each half refines its own
    map's origin and orientation afterwards; half B's poses are moved by the small rotation and sub-voxel
    translation that register its map onto half A's before the two are combined, so the full map and
    the written poses are not blurred or offset by it.
    """
    rot, shift = model.current_poses()
    halves = model.halves.cpu().numpy()
    rng = np.random.default_rng(model.config.seed)
    members = []
    for c in (0, 1):
        m = np.flatnonzero((halves == c) & (True if keep is None else keep))
        if limit is not None and 2 * len(m) > limit:
            m = np.sort(rng.choice(m, limit // 2, replace=False))
        members.append(m)

    def gridded(m: np.ndarray, rots: np.ndarray, shifts: np.ndarray):
        part = m[model.dp.block(len(m))]  # each process grids its block; the sums are added
        acc = model.dp.sum_blocks(accumulate(model.particles, rots, shifts, part, device=model.device))
        return acc.symmetrized(model.symmetry)  # each half on its own: the halves stay independent

    acc = [gridded(m, rot, shift) for m in members]
    if model.halves_aligned:
        ref = solve_map(acc[0])
        change = register_maps(solve_map(acc[1]), ref, seed=model.config.seed)
        angle = np.arccos(np.clip((np.trace(change.rotation) - 1) / 2, -1.0, 1.0))  # radians
        if np.linalg.norm(change.translation) + angle * ref.shape[0] / 2 > REGISTER_MIN_VOXELS:
            in_b = halves == 1
            rot, shift = rot.copy(), shift.copy()
            rot[in_b], shift[in_b] = change.poses(rot[in_b], shift[in_b])
            acc[1] = gridded(members[1], rot, shift)
    return solve_map(acc[0] + acc[1]), solve_map(acc[0]), solve_map(acc[1]), rot, shift


def _masked_fsc(a: np.ndarray, b: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    box = a.shape[0]
    curve = masked_fsc(a, b)
    return np.arange(len(curve)) / (box * voxel), curve


def write_epoch_record(
    model: RunModel,
    out: Path,
    loss: float,
    ips: float,
    stable: float | None,
    change: float | None,
    evaluate: bool,
) -> dict:
    """The epoch's record; when ``evaluate``, also measure its half-map FSC and save its map and poses
    under run folder ``out``."""
    record = {
        "epoch": model.epoch,
        "stage": model.stage.value,
        "wall_s": model.elapsed,
        "loss": loss,
        "images_per_s": ips,
        "head_fractions": model.head_fractions().tolist(),
        "stable_heads": stable,
        "median_pose_change_deg": change,
        "resolution": None,
        "resolution_fsc05": None,
        "fsc": None,
        "switch_reason": model.switch_reason,
        "halves_aligned": model.halves_aligned,
    }
    if not evaluate:
        return record
    voxel = model.particles.pixel_size
    posed = model.semi.posed(model.stage)  # before the switch, only the explored subset has poses
    full, half_a, half_b, rot, shift = _gold_standard(model, MONITOR_PARTICLES, keep=posed)
    epochs_dir = out / "epochs"
    if model.dp.main:
        epochs_dir.mkdir(exist_ok=True)
        save_npz(
            epochs_dir / f"epoch_{model.epoch:03d}.npz",
            volume=full.astype(np.float32),
            rotations=rot.astype(np.float32),
            shifts=shift.astype(np.float32),
            voxel_size=voxel,
            wall_s=model.elapsed,
            halves=model.halves.cpu().numpy().astype(np.int8),
            halves_aligned=model.halves_aligned,
        )
    if not model.halves_aligned:  # half B is still in its own frame: nothing to compare yet
        return record
    freq, curve = _masked_fsc(half_a, half_b, voxel)
    record["resolution"] = resolution_at(freq, curve, 0.143)
    record["resolution_fsc05"] = resolution_at(freq, curve, 0.5)
    record["fsc"] = [freq.tolist(), curve.tolist()]
    return record


@dataclass
class FinalReport:
    """What the finished run says: the summary line and the full-size half maps' resolution and FSCs."""

    summary: str
    resolution: float | None = None  # Å, FSC 0.143 of ``fsc``
    fsc: tuple[np.ndarray, np.ndarray] | None = None  # (frequency 1/Å, FSC) the resolution is read from
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # every FSC, by label


def _postprocessed(model: RunModel, out: Path, maps: FullSizeMaps) -> Postprocessed:
    """Mask, mask-corrected FSC, sharpened map and local resolution of the full-size maps, written beside
    volume.mrc (``postprocess/``)."""
    post = postprocess(maps.full, maps.half_a, maps.half_b, maps.voxel, model.config.seed)
    write_postprocessed(out, post, maps.voxel)
    return post


def _summary_line(
    model: RunModel, out: Path, post: Postprocessed, sizes: tuple[int, int], notes: str, reliable: bool
) -> str:
    """The run's last line: resolution, sharpening, polarity, ``notes`` (verdict, symmetry, junk), the
    half maps' and the map's box (``sizes``). A run its verdict finds unreliable states the half maps'
    FSC 0.143 as their agreement, not as a resolution: halves can agree on a map blurred by mixed poses."""
    box, map_box = sizes
    applied = post.guinier.applied
    sharpened = f"sharpened with B {applied:.0f} Å²" if applied else "FSC-weighted, not sharpened"
    measured = f"mask-corrected FSC 0.143 of the {box}-px half maps; volume_sharpened.mrc {sharpened}"
    head = (
        f"{post.resolution:.1f} Å ({measured})"
        if reliable
        else f"the half maps agree to {post.resolution:.1f} Å, not a resolution the run stands behind "
        f"({measured})"
    )
    return f"done: {head}, {model.polarity.summary()}; {notes}; {map_box}-px map; results in {out}"


def _extra_notes(n_junk: int, left_out: bool, refined: dict | None, semi: dict | None = None) -> str:
    """What the last line adds when it happened: junk left out (or kept), the local refinement's box, the
    particles in doubt searched again and moved, and semi-amortized posing (how many particles the encoder
    posed, how often the audit found it wrong)."""
    fate = "left out" if left_out else "kept (--junk keep)"
    junk = f"; {n_junk} junk {fate}" if n_junk else ""
    rounds = len(refined["rounds"]) if refined else 0
    plural = "round" if rounds == 1 else "rounds"
    notes = junk + (f"; poses refined locally at box {refined['box']} ({rounds} {plural})" if refined else "")
    doubtful = (refined or {}).get("doubtful")
    if doubtful and doubtful["searched"]:
        notes += (
            f"; {doubtful['searched']:.0f} particles in doubt searched over every rotation, "
            f"{doubtful['moved']:.0f} moved to another pose"
        )
    if semi is not None:
        wrong = semi["audit_wrong_share"]
        audit = "no audit" if wrong is None else f"the audit found {wrong:.0%} of its {semi['audit']} wrong"
        notes += (
            f"; {semi['explored']} particles explored, {semi['encoder_posed']} posed by the encoder "
            f"({audit}; {semi['grid_searched']} grid-searched)"
        )
    return notes


def write_results(model: RunModel, out: Path) -> FinalReport:
    """Write volume.mrc, half maps, poses.star, metrics.json and plots; return what the run reports.

    The reported resolution (mask-corrected FSC 0.143), its FSC and the verdict are the full-size half
    maps' (the stack's own box); the working box's FSC is kept in metrics.json as ``final.working_box_fsc``.
    """
    voxel = model.particles.pixel_size
    log.info("scoring junk, final half maps, per-particle scores…")
    junk = score_junk(model)
    keep = ~junk.junk if model.config.junk == "auto" else None
    full, half_a, half_b, rot, shift = _gold_standard(model, keep=keep)
    scores = particle_scores(model)
    symmetry = detect_symmetry(half_a, half_b, model.config.seed)  # the working box's half maps
    imposed = model.imposed["group"] if model.imposed and model.imposed["imposed"] else "C1"
    # Its symmetry mates are not counted, nor the particles scored as junk.
    mates = check_mates(model, (symmetry.group, symmetry.operators()), ~junk.junk)
    if not model.dp.main:  # the maps and scores are every process's work; the files are process 0's
        return FinalReport("")
    halves = model.halves.cpu().numpy()
    kept = np.ones(model.n, bool) if keep is None else keep
    log.info("writing full-size maps…")
    sizes, maps, (rot, shift), mates = write_final_maps(
        model,
        out,
        (full, half_a, half_b),
        [np.flatnonzero((halves == c) & kept) for c in (0, 1)],
        (rot, shift),
        mates,
    )
    columns = {**scores, **junk.columns(), **mates.columns()}
    write_poses_star(out / "poses.star", model.particles, rot, shift, columns)
    n_kept = write_kept(out / KEPT_STAR, model, junk, (rot, shift))
    work_freq, work_curve = _masked_fsc(half_a, half_b, voxel)
    log.info("mask, FSC, sharpening and local resolution of the full-size maps…")
    post = _postprocessed(model, out, maps)
    curves = post.fsc.to_dict()
    freq, curve, res = post.fsc.frequency, post.fsc.corrected, post.resolution
    # The radius the halves were judged at (the planned top when they never were), in working-box cycles.
    top = model.agreement["top_radius"] if model.agreement else model.schedule.explored_radius(model.epoch)
    final_radius = radius_at(curve, 0.143) * model.box / maps.box
    validity = verdict(model.agreement, final_radius, top, model.ctf_check, mates.reason())
    log.info("writing metrics.json and plots…")
    write_json(
        out / "metrics.json",
        {
            "config": model.config.to_dict(),
            "polarity": model.polarity.to_dict(),
            "epochs": model.history,
            "final": {
                "resolution": res,
                "fsc": [freq.tolist(), curve.tolist()],
                "fsc_curves": curves,
                "postprocess": post.to_dict(),
                "working_box_fsc": {
                    "resolution": resolution_at(work_freq, work_curve, 0.143),
                    "fsc": [work_freq.tolist(), work_curve.tolist()],
                },
                "halves_agreement": model.agreement,
                "validity": validity,
                "junk": junk.summary(keep is not None),
                "mates": mates.summary(),
                "symmetry": symmetry.to_dict(imposed),
                "symmetry_imposed": model.imposed,
                "maps": sizes,
                "noise": model.noise.to_dict(),
                "semi_amortized": model.semi.report,
                "repeated_images_dropped": model.particles.repeats_dropped,
            },
        },
    )
    from .plots import plot_run

    labelled = labelled_curves(curves)
    plot_run(out, model.history, labelled)
    n_junk = model.n - n_kept if keep is not None else int(np.count_nonzero(junk.junk))
    notes = f"{validity['message']}; {symmetry.message(imposed)}"
    notes += _extra_notes(n_junk, keep is not None, sizes["local_refinement"], model.semi.report)
    summary = _summary_line(model, out, post, (maps.box, sizes["box"]), notes, validity["reliable"])
    return FinalReport(summary, res, (freq, curve), labelled)
