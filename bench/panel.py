"""The panel of development sets: simulate them, run ``cryospin reconstruct`` on each, score one table.

Five sets are simulated from the atomic models in ``panel_models/`` (distinct shapes; README.md there) with
``cryospin simulate MODEL --box 64 --n 5000 --snr 0.1 --defocus 10000 30000 --max-shift 4``, plus
ribosome70s (made by another simulator) used as it is.
Usage: ``python bench/panel.py make --data DIR``; ``run --data DIR --runs RUNS [--sets a,b] [reconstruct
options]``; ``score --data DIR --runs RUNS`` (also on finished runs). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cryospin.data.mrc import read_volume
from napari_cryospin.data.particles import load_particles
from napari_cryospin.metrics.alignment import rotate_volume
from scoring import ceiling, load_truth, score_poses

HERE = Path(__file__).resolve().parent
MODELS = HERE / "panel_models"
DEFAULT_RIBOSOME = HERE.parent.parent / "shared" / "data" / "ribosome70s"
RECORD = "bench_run.json"
"""The benchmark's record of a run (command, wall time, peak RSS, load) in the run's folder."""
SIMULATE = ["--box", "64", "--n", "5000", "--snr", "0.1", "--defocus", "10000", "30000", "--max-shift", "4"]


@dataclass(frozen=True)
class PanelSet:
    """One development set: its folder name, the model it is simulated from (None: used as given), seed."""

    name: str
    model: str | None
    seed: int
    shape: str


SETS = (
    PanelSet("elongated_1bd2", "1bd2.cif.gz", 1, "elongated complex, 84 kDa"),
    PanelSet("globular_1pwc", "1pwc.pdb.gz", 2, "small globular protein, 35 kDa"),
    PanelSet("dimer_1a28", "1a28.pdb.gz", 3, "pseudo-symmetric C2 dimer, 54 kDa"),
    PanelSet("disc_7pbl", "7pbl.pdb.gz", 4, "disc-like ring complex, 227 kDa"),
    PanelSet("large_4jsv", "4jsv.pdb.gz", 5, "large asymmetric complex, 294 kDa"),
    PanelSet("ribosome70s", None, 0, "70S ribosome, third-party simulator"),
)

COLUMNS = (
    ("set", "set", "{}"),
    ("rot_median", "rot med °", "{:.2f}"),
    ("rot_mean", "rot mean °", "{:.2f}"),
    ("shift_median", "shift px", "{:.2f}"),
    ("fsc05", "FSC0.5 Å", "{:.2f}"),
    ("ceiling05", "ceiling Å", "{:.2f}"),
    ("ratio05", "FSC0.5/ceil", "{:.2f}"),
    ("reported", "reported Å", "{:.2f}"),
    ("fsc0143", "FSC0.143 Å", "{:.2f}"),
    ("ratio0143", "reported/FSC0.143", "{:.2f}"),
    ("wall_min", "wall min", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("load", "load", "{:.2f}"),
)
"""Table columns: row key, header, format. FSC values are resolutions (Å) of the run's poses backprojected in
the truth's frame against the true map; ``reported`` is the run's own half-map FSC 0.143."""


def set_folder(data: Path, item: PanelSet, ribosome: Path) -> Path:
    """Where a set's particles.star and truth are."""
    return ribosome if item.model is None else data / item.name


def chain_symmetry_operators(path: Path, min_overlap: float = 0.9) -> list[dict]:
    """Rotations (3, 3; model x y z frame) that map the whole model onto itself, found by superposing chains.

    For each ordered pair of chains with the same residues (by number and name, ≥ 70 % in common) the CA
    superposition is applied to every CA atom; it is kept when at least ``min_overlap`` of them land within
    3 Å of a CA of the model. A pseudo-symmetric dimer gives its C2; copies that are not related by the
    particle's own symmetry (e.g. two complexes in a crystal's asymmetric unit) are rejected.
    """
    import gemmi
    from scipy.spatial import cKDTree

    st = gemmi.read_structure(str(path))
    st.setup_entities()
    st.remove_waters()
    chains = [c for c in st[0] if len(c.get_polymer()) >= 3]
    ca = np.array([a.pos.tolist() for c in chains for r in c.get_polymer() for a in r if a.name == "CA"])
    tree = cKDTree(ca)
    found: list[dict] = []
    for a in chains:
        by_id = {(r.seqid.num, r.seqid.icode, r.name): r for r in a.get_polymer()}
        for b in chains:
            if a is b:
                continue
            pairs = [(by_id.get((r.seqid.num, r.seqid.icode, r.name)), r) for r in b.get_polymer()]
            pos_a, pos_b = [], []
            for ra, rb in pairs:
                at_a, at_b = (ra.find_atom("CA", "*") if ra else None), rb.find_atom("CA", "*")
                if at_a and at_b:
                    pos_a.append(at_a.pos)
                    pos_b.append(at_b.pos)
            if len(pos_a) < 3 or len(pos_a) < 0.7 * min(len(a.get_polymer()), len(b.get_polymer())):
                continue
            sup = gemmi.superpose_positions(pos_a, pos_b)
            rot = np.array(sup.transform.mat.tolist())
            moved = ca @ rot.T + np.array(sup.transform.vec.tolist())
            overlap = float(np.mean(tree.query(moved)[0] < 3.0))
            if overlap >= min_overlap:
                angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))))
                found.append(
                    {
                        "chains": f"{b.name}->{a.name}",
                        "rotation": rot.tolist(),
                        "angle_deg": angle,
                        "rmsd_A": float(sup.rmsd),
                        "overlap": overlap,
                    }
                )
    return found


def map_self_correlation(volume: np.ndarray, rotation: np.ndarray) -> float:
    """Correlation of the map ``V(S·p)`` with ``V(p)``: near 1 when S is a symmetry of the map."""
    a = rotate_volume(volume, rotation, order=1).ravel().astype(np.float64)
    b = np.asarray(volume, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "napari_cryospin.cli", *args]


def make(data: Path, sets: list[PanelSet], overwrite: bool) -> None:
    """Simulate every model set into ``data/NAME`` and write its symmetry operators (symmetry.json)."""
    try:
        import gemmi  # noqa: F401
    except ImportError:
        raise SystemExit(
            "panel.py make needs gemmi. Fix: pip install gemmi (or the 'atomic' extra)."
        ) from None
    for item in sets:
        if item.model is None:
            continue
        out = data / item.name
        if not (out / "particles.mrcs").exists() or overwrite:
            cmd = _cli("simulate", str(MODELS / item.model), *SIMULATE, "--seed", str(item.seed))
            subprocess.run([*cmd, "--out", str(out), *(["--overwrite"] if overwrite else [])], check=True)
        ops = chain_symmetry_operators(MODELS / item.model)
        volume, _ = read_volume(out / "truth_volume.mrc")
        for op in ops:
            op["map_correlation"] = map_self_correlation(volume, np.array(op["rotation"]))
        (out / "symmetry.json").write_text(json.dumps({"model": item.model, "operators": ops}, indent=1))
        print(f"{item.name}: {len(ops)} symmetry operator(s) " + ", ".join(_describe(op) for op in ops))


def _describe(op: dict) -> str:
    return (
        f"{op['chains']} {op['angle_deg']:.1f}° (rmsd {op['rmsd_A']:.2f} Å, overlap {op['overlap']:.2f}, "
        f"map correlation {op.get('map_correlation', float('nan')):.3f})"
    )


def operators_of(folder: Path) -> np.ndarray | None:
    """The symmetry rotations (k, 3, 3) that ``make`` stored for a set, or None."""
    path = folder / "symmetry.json"
    if not path.exists():
        return None
    ops = [op["rotation"] for op in json.loads(path.read_text())["operators"]]
    return np.array(ops) if ops else None


def _load() -> float:
    return os.getloadavg()[0]


def run(data: Path, runs: Path, sets: list[PanelSet], ribosome: Path, extra: list[str]) -> None:
    """``cryospin reconstruct`` with defaults (plus ``extra``) on each set, one after the other; records the
    command, wall time, the child's peak RSS and the load average before it in RUNS/NAME/RECORD (beside the
    run's own run.json, which marks it finished and must stay the engine's)."""
    for item in sets:
        folder = set_folder(data, item, ribosome)
        if not (folder / "particles.star").exists():
            print(
                f"[{item.name}] {folder}/particles.star not found: skipped. Fix: run make first.",
                file=sys.stderr,
            )
            continue
        out = runs / item.name
        out.mkdir(parents=True, exist_ok=True)
        cmd = _cli("reconstruct", str(folder / "particles.star"), "--out", str(out), *extra)
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        load = _load()
        print(f"[{item.name}] {uptime}\n  {' '.join(cmd)}", flush=True)
        start = time.monotonic()
        with open(out / "run.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        code = os.waitstatus_to_exitcode(status)
        info = {
            "command": cmd,
            "returncode": code,
            "wall_s": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
            "load_before": load,
            "uptime_before": uptime,
        }
        (out / RECORD).write_text(json.dumps(info, indent=1))
        print(f"  exit {code}, {wall / 60:.1f} min, peak RSS {info['peak_rss_mb']:.0f} MB", flush=True)


def table_row(
    name: str,
    score: dict | None,
    ceiling05: float | None,
    reported: float | None,
    info: dict | None,
) -> dict:
    """One table row: the pose score (``rot_median``, ``rot_mean``, ``shift_median``, ``fsc05``,
    ``fsc0143``), the ceiling, the run's reported resolution and its RECORD, with the two ratios."""
    score = score or {}
    info = info or {}
    fsc05, fsc0143 = score.get("fsc05"), score.get("fsc0143")
    wall = info.get("wall_s")
    return {
        "set": name,
        "rot_median": score.get("rot_median"),
        "rot_mean": score.get("rot_mean"),
        "shift_median": score.get("shift_median"),
        "fsc05": fsc05,
        "ceiling05": ceiling05,
        "ratio05": fsc05 / ceiling05 if fsc05 and ceiling05 else None,
        "reported": reported,
        "fsc0143": fsc0143,
        "ratio0143": reported / fsc0143 if reported and fsc0143 else None,
        "wall_min": wall / 60 if wall is not None else None,
        "peak_rss_mb": info.get("peak_rss_mb"),
        "load": info.get("load_before"),
    }


def markdown_table(rows: list[dict]) -> str:
    """The rows as one markdown table (``COLUMNS``); a missing value shows as —."""
    lines = ["| " + " | ".join(head for _, head, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for row in rows:
        cells = [
            "—" if row.get(key) is None or row.get(key) != row.get(key) else fmt.format(row[key])
            for key, _, fmt in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ceiling(folder: Path, truth, n: int, cache: Path) -> float:
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    key = f"{folder.resolve()}:{n}"
    if key not in cached:
        cached[key] = ceiling(truth, n)[0]
        cache.write_text(json.dumps(cached, indent=1))
    return cached[key]


def score(data: Path, runs: Path, sets: list[PanelSet], ribosome: Path) -> list[dict]:
    """Score every set's finished run (RUNS/NAME: poses.star, metrics.json, RECORD); print one table and
    write RUNS/panel.md and RUNS/panel.json. The ceiling uses the same particles as the run (cached in
    RUNS/ceilings.json)."""
    rows = []
    for item in sets:
        folder, out = set_folder(data, item, ribosome), runs / item.name
        if not (out / "poses.star").exists():
            print(f"[{item.name}] no finished run in {out}: left out", file=sys.stderr)
            continue
        truth = load_truth(folder)
        est = load_particles(out / "poses.star")
        shifts = est.shifts * est.pixel_size / truth.particles.pixel_size
        pose = score_poses(est.rotations, shifts, truth, operators_of(folder))
        metrics = json.loads((out / "metrics.json").read_text())
        info = json.loads((out / RECORD).read_text()) if (out / RECORD).exists() else None
        rows.append(
            table_row(
                item.name,
                {k: v for k, v in vars(pose).items() if k != "alignment"},
                _ceiling(folder, truth, len(est), runs / "ceilings.json"),
                metrics.get("final", {}).get("resolution"),
                info,
            )
        )
    table = markdown_table(rows)
    print(table)
    (runs / "panel.md").write_text(table + "\n")
    (runs / "panel.json").write_text(json.dumps(rows, indent=1))
    return rows


def main(argv: list[str] | None = None) -> int:
    """``make`` / ``run`` / ``score`` the panel (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("make", "run", "score"))
    p.add_argument("--data", type=Path, required=True, help="folder of the simulated sets")
    p.add_argument("--runs", type=Path, help="folder of the runs (run, score)")
    p.add_argument("--sets", help="comma-separated set names (default: all)")
    p.add_argument("--ribosome", type=Path, default=DEFAULT_RIBOSOME, help="the ribosome70s folder")
    p.add_argument("--overwrite", action="store_true", help="make: simulate again over existing sets")
    args, extra = p.parse_known_args(argv)
    sets = list(SETS)
    if args.sets:
        names = args.sets.split(",")
        unknown = sorted(set(names) - {s.name for s in SETS})
        if unknown:
            raise SystemExit(f"unknown set(s) {unknown}; the panel has {[s.name for s in SETS]}")
        sets = [s for s in SETS if s.name in names]
    if args.command != "make" and args.runs is None:
        raise SystemExit(f"{args.command} needs --runs DIR")
    extra = [a for a in extra if a != "--"]
    if extra and args.command != "run":
        raise SystemExit(f"unknown options {extra} (reconstruct options go with run)")
    if args.command == "make":
        make(args.data, sets, args.overwrite)
    elif args.command == "run":
        run(args.data, args.runs, sets, args.ribosome, extra)
    else:
        score(args.data, args.runs, sets, args.ribosome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
