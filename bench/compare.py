"""Side-by-side ab-initio benchmark: cryoSPIN against cryoDRGN's abinit (DRGN-AI) and abinit_homo_old.

Each method runs on the same particles with the same thread count and a wall-clock budget; a watcher copies
every map the method writes (with its elapsed time), records peak memory and CPU time of the process tree,
and kills the run at the budget. Every kept map is then scored against the truth (FSC 0.5 after global
alignment), the final poses by their rotation error after alignment; a table, results.json and a plot of
resolution against wall time are written. Usage: ``python bench/compare.py DATASET_DIR --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import psutil
import starfile
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cryodrgn_convert import UNINVERT_FLAG, convert, load_cryodrgn_poses
from relion_inputs import pipeline_script, write_inputs

METHODS = ("cryospin", "drgnai", "bnb", "relion")
LABELS = {
    "cryospin": "cryoSPIN (cryospin reconstruct)",
    "drgnai": "cryoDRGN abinit (DRGN-AI)",
    "bnb": "cryoDRGN abinit_homo_old (branch and bound)",
    "relion": "RELION 3.1.3 InitialModel, then Refine3D",
}
SCORED_MAPS = {
    "cryospin": re.compile(r"^(epoch_\d+\.npz|volume\.mrc)$"),
    "drgnai": re.compile(r"^reconstruct\.\d+\.mrc$"),
    "bnb": re.compile(r"^reconstruct\.\d+\.mrc$"),
    "relion": re.compile(r"^run(_it\d+)?(_half1)?_class001\.mrc$"),
}
"""The maps of each method that are its reconstructions, the only ones copied and scored: not masks,
local-resolution or sharpened maps, RELION's SGD gradients or its second half maps (the first stands for
both)."""
CEILING_MULTIPLES = (3.0, 2.0, 1.5, 1.15)
"""Resolutions timed, as multiples of the known-pose ceiling (the same yardstick on every data set)."""
DEFAULT_CRYODRGN = "/work/cryodrgn-venv/bin/cryodrgn"


@dataclass
class Dataset:
    """The input STAR and the truth of a benchmark folder (ribosome or ``cryospin simulate`` layout)."""

    star: Path
    truth_star: Path
    truth_map: Path

    @classmethod
    def find(cls, folder: Path) -> Dataset:
        """Locate particles.star and the truth in ``folder``; raise naming what is missing."""
        layouts = [
            (folder / "truth" / "particles_with_poses.star", folder / "truth" / "gt_volume.mrc"),
            (folder / "truth.star", folder / "truth_volume.mrc"),
        ]
        star = folder / "particles.star"
        if not star.is_file():
            raise FileNotFoundError(f"{star}: not found (a benchmark folder needs particles.star)")
        for truth_star, truth_map in layouts:
            if truth_star.is_file() and truth_map.is_file():
                return cls(star, truth_star, truth_map)
        raise FileNotFoundError(
            f"{folder}: no truth found (expected truth/particles_with_poses.star + truth/gt_volume.mrc, "
            f"or truth.star + truth_volume.mrc)"
        )


@dataclass
class RunRecord:
    """What the watcher saw of one method's run."""

    method: str
    command: list[str]
    budget_s: float
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    returncode: int | None = None
    killed_at_budget: bool = False
    snapshots: list[tuple[float, str]] = field(default_factory=list)  # (elapsed s, copied map)
    continued_at_s: list[float] = field(default_factory=list)  # elapsed s where each continuation began


def thread_env(threads: int) -> dict[str, str]:
    """The environment with every BLAS/OpenMP/torch thread pool capped at ``threads``."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[key] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _sample(procs: list[psutil.Process], cpu_by_pid: dict[int, float]) -> float:
    """Total RSS (MB) of ``procs``; updates each process's latest CPU time in ``cpu_by_pid``."""
    rss = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            t = p.cpu_times()
            cpu_by_pid[p.pid] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return rss / 2**20


def _maps_under(watch: Path) -> list[Path]:
    """Every map file (.mrc, or cryoSPIN's per-epoch .npz) under ``watch``, sorted."""
    return sorted([*watch.rglob("*.mrc"), *watch.rglob("*.npz")])


def _copy_new_maps(
    watch: Path, seen: dict[Path, float], snap_dir: Path, start: float, record: RunRecord
) -> None:
    """Copy each of the method's reconstructions (``SCORED_MAPS``) under ``watch`` that is new or rewritten
    and has been quiet for a second."""
    scored = SCORED_MAPS[record.method]
    now = time.time()
    for path in _maps_under(watch):
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if seen.get(path) == mtime or now - mtime < 1.0 or not scored.match(path.name):
            continue
        seen[path] = mtime
        elapsed = mtime - start
        name = f"{len(record.snapshots):03d}_{elapsed:08.1f}s_{path.name}"
        shutil.copy2(path, snap_dir / name)
        record.snapshots.append((round(elapsed, 1), str(snap_dir / name)))


class WatchedRun:
    """One method's run: started, polled (maps copied, memory and CPU sampled) and stopped at its budget."""

    def __init__(
        self,
        method: str,
        command: list[str],
        workdir: Path,
        watch: Path,
        budget_s: float,
        threads: int,
        previous: RunRecord | None = None,
    ):
        """``previous``: the record of the run this one continues (its maps kept, its clock counted on)."""
        self.workdir, self.watch = workdir, watch
        self.snap_dir = workdir / "snapshots"
        if previous is None:
            shutil.rmtree(self.snap_dir, ignore_errors=True)
        self.snap_dir.mkdir(parents=True, exist_ok=True)
        watch.mkdir(parents=True, exist_ok=True)
        self.record = RunRecord(method, command, budget_s)
        self.seen: dict[Path, float] = {}
        self.cpu_by_pid: dict[int, float] = {}
        self.earlier_cpu_s = offset = 0.0
        if previous is not None:  # its maps are copied already; its time, memory and CPU carry over
            offset = previous.wall_s
            self.record.snapshots = list(previous.snapshots)
            self.record.continued_at_s = [*previous.continued_at_s, offset]
            self.record.peak_rss_mb, self.earlier_cpu_s = previous.peak_rss_mb, previous.cpu_s
            self.seen = {p: p.stat().st_mtime for p in _maps_under(watch)}
        self.log = open(workdir / "run.log", "a" if previous else "w")  # noqa: SIM115 - closed in finish()
        self.start = time.time() - offset
        self.popen = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=thread_env(threads),
            start_new_session=True,
        )  # fmt: skip
        self.proc = psutil.Process(self.popen.pid)

    def poll(self) -> bool:
        """Sample the run once; stop it at its budget. True while it is still running."""
        if self.popen.poll() is not None:
            return False
        rss = _sample(_tree(self.proc), self.cpu_by_pid)
        self.record.peak_rss_mb = max(self.record.peak_rss_mb, rss)
        _copy_new_maps(self.watch, self.seen, self.snap_dir, self.start, self.record)
        if time.time() - self.start > self.record.budget_s:
            self.record.killed_at_budget = True
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
            return False
        return True

    def finish(self) -> RunRecord:
        """Record wall and CPU time, copy the last maps and write ``run.json``."""
        self.log.close()
        record = self.record
        record.wall_s = round(time.time() - self.start, 1)
        record.returncode = self.popen.returncode
        record.cpu_s = round(self.earlier_cpu_s + sum(self.cpu_by_pid.values()), 1)
        time.sleep(1.1)
        _copy_new_maps(self.watch, self.seen, self.snap_dir, self.start, record)
        (self.workdir / "run.json").write_text(json.dumps(asdict(record), indent=1))
        return record


def run_all(
    runs: list[tuple[str, list[str], Path, RunRecord | None]], budget_s: float, threads: int, concurrent: bool
) -> None:
    """Run each (method, command, workdir, the record it continues or None), one after the other or all at
    once, each within its budget."""
    pending = list(runs)
    while pending:
        batch = pending if concurrent else pending[:1]
        pending = [] if concurrent else pending[1:]
        active = []
        for method, command, workdir, previous in batch:
            print(f"{method}: {' '.join(command)}", flush=True)
            watched = WatchedRun(method, command, workdir, workdir / "out", budget_s, threads, previous)
            active.append(watched)
        while active:
            time.sleep(1.0)
            for run in [r for r in active if not r.poll()]:
                active.remove(run)
                record = run.finish()
                print(f"{record.method}: {record.wall_s:.0f} s, {len(record.snapshots)} maps, "
                      f"rc {record.returncode}", flush=True)  # fmt: skip


def commands(
    method: str, data: Dataset, inputs: dict, run_dir: Path, threads: int, args: argparse.Namespace
) -> list[str]:
    """The command line of ``method`` writing into ``run_dir``."""
    if method == "cryospin":
        return [args.cryospin, "reconstruct", str(data.star), "--out", str(run_dir), *args.cryospin_args]
    if method == "relion":
        run_dir.mkdir(parents=True, exist_ok=True)
        return ["bash", str(pipeline_script(inputs["relion"], run_dir, threads))]
    common = [inputs["particles"], "--ctf", inputs["ctf"], "-o", str(run_dir), UNINVERT_FLAG]
    if method == "drgnai":
        return [
            args.cryodrgn, "abinit", *common, "--zdim", "0", "--checkpoint", "1", "-n", "1000",
            "--max-threads", str(threads), "--num-workers", "0", "--no-analysis", "--seed", "0",
        ]  # fmt: skip
    return [args.cryodrgn, "abinit_homo_old", *common, "--checkpoint", "1", "-n", "1000", "--seed", "0"]


def _star_rotations(path: Path) -> np.ndarray:
    """R (conventions) from the Euler angles of a STAR file's particle table."""
    table = starfile.read(path, always_dict=True)
    particles = table.get("particles", next(iter(table.values())))
    euler = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    return Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix()


def read_map(path: str | Path) -> np.ndarray:
    """A map from an .mrc, or the ``volume`` of a cryoSPIN per-epoch .npz."""
    if str(path).endswith(".npz"):
        with np.load(path) as saved:
            return saved["volume"].astype(np.float32)
    return mrcfile.read(path).astype(np.float32)


def final_rotations(method: str, run_dir: Path, box: int) -> np.ndarray | None:
    """The method's last written rotations (conventions' R), or None when it wrote none."""
    if method == "cryospin":  # the final poses (both halves in one frame), else the last epoch's
        if (run_dir / "poses.star").is_file():
            return _star_rotations(run_dir / "poses.star")
        epochs = sorted(run_dir.rglob("epoch_*.npz"), key=lambda p: p.stat().st_mtime)
        if not epochs:
            return None
        with np.load(epochs[-1]) as saved:
            return saved["rotations"].astype(np.float64)
    if method == "relion":
        stars = sorted(run_dir.rglob("run*_data.star"), key=lambda p: p.stat().st_mtime)
        return _star_rotations(stars[-1]) if stars else None
    pkls = sorted(run_dir.glob("pose*.pkl"), key=lambda p: p.stat().st_mtime)
    return load_cryodrgn_poses(pkls[-1], box)[0] if pkls else None


def _original_name(snapshot: str) -> str:
    """The name a copied map had in the run (``NNN_TTTTTT.Ts_NAME`` → ``NAME``)."""
    return Path(snapshot).name.split("_", 2)[2]


def _pick(snapshots: list[tuple[float, str]], k: int) -> list[tuple[float, str]]:
    """At most ``k`` snapshots spread evenly over the list, always the last."""
    if len(snapshots) <= k:
        return snapshots
    idx = np.unique(np.round(np.linspace(0, len(snapshots) - 1, k)).astype(int))
    return [snapshots[i] for i in idx]


def score_maps(
    snapshots: list[tuple[float, str]], truth: np.ndarray, voxel: float, max_maps: int
) -> list[dict[str, float]]:
    """Resolution at FSC 0.5 against the truth of each kept map, after the best global alignment.

    Each map gets its own alignment search and is also tried with the last map's alignment (the better
    FSC resolution is kept), so a failed search on a noisy early map does not hide real progress.
    """
    from napari_cryospin.metrics.alignment import fsc_to_truth

    out: list[dict[str, float]] = []
    reference: tuple[np.ndarray, bool] | None = None
    for elapsed, path in reversed(_pick(snapshots, max_maps)):
        vol = read_map(path)
        if vol.shape != truth.shape or not np.isfinite(vol).all():
            continue
        best = fsc_to_truth(vol, truth, voxel, n_coarse=1000)
        if reference is not None:
            other = fsc_to_truth(vol, truth, voxel, rotation=reference[0], flip=reference[1])
            best = min(best, other, key=lambda c: c.resolution(0.5))
        if reference is None:
            reference = (best.rotation, best.flip)
        out.append({"t": elapsed, "res": round(best.resolution(0.5), 2), "map": path})
        print(f"  {Path(path).name}: {best.resolution(0.5):.1f} Å", flush=True)
    return sorted(out, key=lambda s: s["t"])


def time_to(scores: list[dict[str, float]], threshold: float) -> float | None:
    """Elapsed seconds of the first map at or better than ``threshold`` Å, or None."""
    return next((s["t"] for s in scores if s["res"] <= threshold), None)


def ceiling(data: Dataset, truth: np.ndarray) -> float:
    """Resolution (FSC 0.5 vs truth) of the project's known-pose backprojection of the truth poses."""
    from napari_cryospin.data.particles import load_particles
    from napari_cryospin.metrics.alignment import fsc_to_truth
    from napari_cryospin.physics.reconstruction import backproject

    particles = load_particles(data.truth_star)
    vol = backproject(particles, particles.rotations, particles.shifts)
    return fsc_to_truth(vol, truth, particles.pixel_size, rotation=np.eye(3), flip=False).resolution(0.5)


def evaluate(
    method: str,
    run_dir: Path,
    data: Dataset,
    truth: np.ndarray,
    voxel: float,
    max_maps: int,
    ceiling_res: float,
) -> dict:
    """Scores of one finished run: resolution over time, time to each multiple of the ceiling, pose errors,
    resources."""
    from napari_cryospin.metrics.alignment import align_rotations

    record = json.loads((run_dir / "run.json").read_text())
    cache = run_dir / f"scores_{max_maps}.json"
    if cache.is_file() and cache.stat().st_mtime > (run_dir / "run.json").stat().st_mtime:
        scores = json.loads(cache.read_text())
    else:
        # Filtered again: runs copied before the copy itself was filtered hold every map they wrote.
        maps = [tuple(s) for s in record["snapshots"] if SCORED_MAPS[method].match(_original_name(s[1]))]
        print(f"{method}: scoring {len(maps)} maps (at most {max_maps})", flush=True)
        scores = score_maps(maps, truth, voxel, max_maps)
        cache.write_text(json.dumps(scores, indent=1))
    result = {
        "method": method,
        "label": LABELS[method],
        "wall_s": record["wall_s"],
        "cpu_s": record["cpu_s"],
        "peak_rss_mb": round(record["peak_rss_mb"]),
        "killed_at_budget": record["killed_at_budget"],
        "returncode": record["returncode"],
        "curve": scores,
        "final_res": scores[-1]["res"] if scores else None,
        "best_res": min(s["res"] for s in scores) if scores else None,
        "time_to": {f"{m:g}": time_to(scores, m * ceiling_res) for m in CEILING_MULTIPLES},
    }
    rotations = final_rotations(method, run_dir / "out", truth.shape[0])
    if rotations is not None:
        gt = _star_rotations(data.truth_star)
        aligned = align_rotations(rotations, gt)
        result["pose_median_deg"] = round(float(aligned.median), 2)
        result["pose_mean_deg"] = round(float(aligned.mean), 2)
    return result


def _fmt_time(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f}"


def table(results: list[dict], ceiling_res: float) -> str:
    """Markdown table of the results (times in minutes), then each method's times over cryoSPIN's."""
    heads = [f"t→{m:g}× ({m * ceiling_res:.1f} Å)" for m in CEILING_MULTIPLES]
    lines = [
        "| method | wall (min) | CPU (min) | " + " | ".join(heads)
        + " | final res (Å) | best res (Å) | rot. err median / mean (°) | peak RSS (MB) |",
        "|" + "---|" * (7 + len(CEILING_MULTIPLES)),
    ]  # fmt: skip
    for r in results:
        pose = f"{r['pose_median_deg']:.1f} / {r['pose_mean_deg']:.1f}" if "pose_median_deg" in r else "—"
        times = " | ".join(_fmt_time(r["time_to"][f"{m:g}"]) for m in CEILING_MULTIPLES)
        final = "—" if r["final_res"] is None else f"{r['final_res']:.1f}"
        best = "—" if r["best_res"] is None else f"{r['best_res']:.1f}"
        lines.append(
            f"| {r['label']} | {r['wall_s'] / 60:.1f} | {r['cpu_s'] / 60:.1f} | {times} | {final} | {best} "
            f"| {pose} | {r['peak_rss_mb']} |"
        )
    blank = "| " * (2 + len(CEILING_MULTIPLES))
    lines.append(f"| known-pose backprojection (ceiling) {blank}| {ceiling_res:.1f} | | | |")
    return "\n".join([*lines, "", *time_ratios(results)])


def time_ratios(results: list[dict]) -> list[str]:
    """Each other method's time to each resolution over cryoSPIN's, where both reached it."""
    ours = next((r for r in results if r["method"] == "cryospin"), None)
    if ours is None:
        return []
    lines = []
    for r in results:
        if r is ours:
            continue
        parts = []
        for m in CEILING_MULTIPLES:
            theirs, mine = r["time_to"][f"{m:g}"], ours["time_to"][f"{m:g}"]
            if theirs is not None and mine:
                parts.append(f"{m:g}× ceiling: {theirs / mine:.1f} × cryoSPIN's time")
            elif mine is not None:
                parts.append(f"{m:g}× ceiling: not reached (cryoSPIN {mine / 60:.1f} min)")
        lines.append(f"- {r['label']}: " + ("; ".join(parts) or "cryoSPIN reached none of these"))
    return lines


def plot(results: list[dict], ceiling_res: float, budget_min: float, title: str, path: Path) -> None:
    """Resolution (FSC 0.5 vs truth) against wall time, both axes logarithmic, one line per method, the
    known-pose ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in results:
        if r["curve"]:
            t = [s["t"] / 60 for s in r["curve"]]
            ax.plot(t, [s["res"] for s in r["curve"]], marker="o", ms=3, label=r["label"])
    ax.axhline(ceiling_res, color="k", ls="--", lw=1, label=f"known poses ({ceiling_res:.1f} Å)")
    ax.set_xscale("log")
    ax.set_xlim(0.1, budget_min * 1.05)
    ax.set_yscale("log")
    ax.set_yticks(
        [10, 15, 20, 30, 50, 100, 200, 400], labels=["10", "15", "20", "30", "50", "100", "200", "400"]
    )
    ax.minorticks_off()
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("resolution, FSC 0.5 vs truth (Å)")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="folder with particles.star/.mrcs and the truth")
    p.add_argument("--out", type=Path, default=None, help="output folder (default /work/bench-out/NAME)")
    p.add_argument("--budget-min", type=float, default=20.0, help="wall-clock budget per method (min)")
    p.add_argument("--threads", type=int, default=2, help="threads for every method")
    p.add_argument(
        "--concurrent", action="store_true", help="run the methods at the same time (e.g. one thread each)"
    )
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    p.add_argument("--reuse", action="store_true", help="score existing runs in --out instead of rerunning")
    p.add_argument(
        "--continue-methods",
        default="",
        help="comma-separated methods whose runs in --out go on where they stopped (e.g. relion after a "
        "failed Refine3D): maps kept, the clock counted on from the recorded wall time, the same budget",
    )
    p.add_argument("--max-maps", type=int, default=16, help="maps scored per method (spread over time)")
    p.add_argument("--cryodrgn", default=os.environ.get("CRYODRGN", DEFAULT_CRYODRGN))
    beside = Path(sys.executable).with_name("cryospin")
    p.add_argument("--cryospin", default=str(beside) if beside.exists() else shutil.which("cryospin"))
    p.add_argument(
        "--cryospin-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra arguments for cryospin reconstruct",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen methods (or reuse their runs), score them and write table, results.json and plot."""
    args = parse_args(argv)
    data = Dataset.find(args.dataset)
    out = (args.out or Path("/work/bench-out") / args.dataset.resolve().name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    inputs: dict = convert(data.star, out / "cryodrgn_inputs")
    if "relion" in methods:
        inputs["relion"] = write_inputs(data.star, out / "relion_inputs")
    with mrcfile.open(data.truth_map, permissive=True) as mrc:
        truth = mrc.data.astype(np.float32)
    voxel = float(inputs["pixel_size"])
    runs = []
    continued = {m for m in args.continue_methods.split(",") if m}
    for method in methods:
        run_dir = out / method
        previous = None
        if method in continued and (run_dir / "run.json").is_file():
            previous = RunRecord(**json.loads((run_dir / "run.json").read_text()))
            previous.snapshots = [tuple(s) for s in previous.snapshots]
        elif args.reuse and (run_dir / "run.json").is_file():
            continue
        else:
            shutil.rmtree(run_dir / "out", ignore_errors=True)
        command = commands(method, data, inputs, run_dir / "out", args.threads, args)
        runs.append((method, command, run_dir, previous))
    run_all(runs, args.budget_min * 60, args.threads, args.concurrent)
    cached = out / "ceiling.json"
    if args.reuse and cached.is_file():
        ceiling_res = json.loads(cached.read_text())["ceiling_res"]
    else:
        ceiling_res = ceiling(data, truth)
        cached.write_text(json.dumps({"ceiling_res": ceiling_res}))
    results = [
        evaluate(m, out / m, data, truth, voxel, args.max_maps, ceiling_res)
        for m in METHODS
        if (out / m / "run.json").is_file()
    ]
    summary = {
        "dataset": str(args.dataset.resolve()),
        "threads": args.threads,
        "concurrent": args.concurrent,
        "budget_min": args.budget_min,
        "ceiling_res": round(ceiling_res, 2),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    text = table(results, ceiling_res)
    (out / "table.md").write_text(text + "\n")
    plot(
        results,
        ceiling_res,
        args.budget_min,
        f"{args.dataset.resolve().name}: {args.threads} thread(s) each, "
        + ("all at once" if args.concurrent else "one after the other"),
        out / "resolution_vs_time.png",
    )
    print(text)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'resolution_vs_time.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
